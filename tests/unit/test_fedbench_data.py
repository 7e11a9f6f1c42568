"""fedbench-tiny data and training in fl_ray equal the peer scripts' (../shared/bench/)."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from transformers import LlamaConfig, LlamaForCausalLM

from fl_ray.cli import main as cli_main
from fl_ray.config import parse_recipe
from fl_ray.data import random_token_splits, sequential_batch
from fl_ray.model import get_adapter_state
from fl_ray.silo import Silo

VOCAB, SEQS, SEQ, BATCH, STEPS = 512, 24, 16, 4, 3
SMALL = {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def peers_base() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**SMALL, num_attention_heads=4, num_key_value_heads=4))


def peers_model():
    """The peers' build_model (seeded base, then peft's own LoRA init), at a tiny size."""
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS)
    return get_peft_model(peers_base(), lora)


@pytest.fixture(scope="module")
def no_tokenizer_base(tmp_path_factory):
    """The peers' base saved with no tokenizer (random tokens need none)."""
    out = tmp_path_factory.mktemp("fedbench") / "base"
    peers_base().save_pretrained(str(out))
    return out


def test_random_tokens_are_the_peers_data():
    for idx in (0, 3):
        train, held_out = random_token_splits(SEQS, SEQ, VOCAB, 1000 + idx)
        theirs = torch.randint(
            0, VOCAB, (SEQS, SEQ), generator=torch.Generator().manual_seed(1000 + idx)
        )
        assert torch.equal(train.input_ids, theirs)
        assert torch.equal(train.labels, theirs)  # loss on every token, as `labels=b`
        assert bool(train.attention_mask.all())
        assert held_out.input_ids.shape[1] == SEQ
        assert not torch.equal(held_out.input_ids, theirs[: len(held_out)])


def test_sequential_batches_are_the_peers_windows():
    x = torch.arange(10)
    for step in range(12):
        off = step * 4 % 10
        assert torch.equal(x[sequential_batch(10, 4, step)], x[off : off + 4])


def _recipe(base, silos=2, **train):
    tree = {
        "run_name": "fb",
        "base_model": {"path": str(base)},
        "lora": {"r": 8, "alpha": 16, "target_modules": TARGETS},
        "data": {"source": "random_tokens", "random_seqs": SEQS},
        "silos": [{"name": f"s{i}"} for i in range(silos)],
        "federation": {"sign": False},
        "train": {
            "local_steps": STEPS,
            "batch_size": BATCH,
            "seq_len": SEQ,
            "lr": 1e-3,
            "weight_decay": 0.01,
            "max_grad_norm": None,
            "batch_order": "sequential",
            **train,
        },
    }
    return parse_recipe(tree)


def _silo(recipe, index):
    return Silo(
        recipe.silos[index],
        recipe.base_model,
        recipe.lora,
        recipe.data,
        recipe.train,
        recipe.seed,
        silo_index=index,
    )


def peers_train(model, x, rnd, state):
    """minimal_ray_fedbench.py's Silo.train, verbatim in substance."""
    set_peft_model_state_dict(model, {k: v.clone() for k, v in state.items()})
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-3)
    for s in range(STEPS):
        off = ((rnd - 1) * STEPS + s) * BATCH % SEQS
        b = x[off : off + BATCH]
        out = model(input_ids=b, labels=b)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    return get_peft_model_state_dict(model), float(out.loss.detach())


def test_silo_trains_exactly_like_the_peers_without_a_tokenizer(no_tokenizer_base):
    assert not (no_tokenizer_base / "tokenizer.json").exists()
    recipe = _recipe(no_tokenizer_base)
    silo = _silo(recipe, 1)
    theirs_model = peers_model()
    init = {k: v.detach().clone() for k, v in get_peft_model_state_dict(theirs_model).items()}
    x = torch.randint(0, VOCAB, (SEQS, SEQ), generator=torch.Generator().manual_seed(1001))
    assert torch.equal(silo.train_split.input_ids, x)
    state = init
    for rnd in (1, 2, 3):  # round 3 wraps past the end of the 24 sequences
        update = silo.train(rnd, state)
        their_state, their_loss = peers_train(theirs_model, x, rnd, state)
        assert update.metrics["train_loss_last"] == pytest.approx(their_loss, abs=1e-6)
        for key, tensor in their_state.items():
            torch.testing.assert_close(update.state[key], tensor, rtol=0, atol=1e-6)
        state = update.state
    assert update.num_examples == SEQS
    assert silo.evaluate(state)["eval_tokens"] > 0


def test_shared_model_silos_equal_separate_ones(no_tokenizer_base):
    """Packed silos share one model: sequential use must not leak state between them."""
    recipe = _recipe(no_tokenizer_base, silos=2)
    alone = [_silo(recipe, i) for i in range(2)]
    shared_model = alone[0].model
    shared = [
        Silo(
            recipe.silos[i],
            recipe.base_model,
            recipe.lora,
            recipe.data,
            recipe.train,
            recipe.seed,
            model=shared_model,
            silo_index=i,
        )
        for i in range(2)
    ]
    init = get_adapter_state(alone[1].model)
    for rnd in (1, 2):
        for a, b in zip(alone, shared, strict=True):
            ua, ub = a.train(rnd, init), b.train(rnd, init)
            assert all(torch.equal(ua.state[k], ub.state[k]) for k in ua.state)


def test_random_tokens_need_the_silo_index(no_tokenizer_base):
    recipe = _recipe(no_tokenizer_base)
    with pytest.raises(ValueError, match="silo_index"):
        Silo(recipe.silos[0], recipe.base_model, recipe.lora, recipe.data, recipe.train, 0)


def test_bench_cli_rejects_bad_shape(capsys):
    assert cli_main(["bench", "--silos", "0"]) == 2
    assert cli_main(["bench", "--systems", "floor,nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("fl-ray bench: error:") for line in err)


def test_bench_recipe_file_is_the_bench_workload(tmp_path):
    from fl_ray.cli_bench import fedbench_recipe_tree
    from fl_ray.config import load_recipe

    from_file = load_recipe("recipes/fedbench_tiny.yaml", check_paths=False)
    generated = parse_recipe(
        fedbench_recipe_tree(tmp_path, 4, 5, 8, tmp_path, "fedbench-tiny"), check_paths=False
    )
    same = {"output_dir": "x", "base_model": from_file.base_model}
    assert from_file.model_copy(update=same) == generated.model_copy(update=same)
