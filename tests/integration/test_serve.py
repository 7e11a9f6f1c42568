"""fl-ray serve on real Ray Serve: real HTTP on 127.0.0.1, the official openai client, and
refusal to start when one byte of a receipt or of the adapter is changed."""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml

from fl_ray.config import BaseModelSpec, LoraSpec
from fl_ray.model import (
    adapter_rank,
    attach_lora,
    initial_adapter_state,
    load_base,
    load_tokenizer,
    set_adapter_state,
)
from fl_ray.rundir import RunDir
from tests.conftest import SILOS, recipe_tree

RUN_NAME = "served"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fl_ray.cli", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def signed_run(tiny_base, tmp_path_factory) -> Path:
    """Rounds 0..1 with real keystores, EIP-712 signatures and receipts, on the tiny base.

    Built with the receipts library's synthetic run (training replaced by seeded noise on the
    adapter) so the test spends its time serving, not training.
    """
    from fl_ray.receipts.synthetic import synthesise_run

    out = tmp_path_factory.mktemp("signed")
    shutil.copytree(tiny_base, out / "base")  # weights + tokenizer; the receipt fingerprints it
    config = json.loads((tiny_base / "config.json").read_text())
    initial = initial_adapter_state(BaseModelSpec(path=str(tiny_base)), LoraSpec(), seed=0)
    run = synthesise_run(out, initial, list(SILOS[:2]), 1, run_name=RUN_NAME, base_config=config)
    return run.run_dir


@pytest.fixture(scope="module")
def server(signed_run):
    """The run's last round on Ray Serve, on a private local Ray, on a free port."""
    import ray
    from ray import serve

    from fl_ray.on_ray.serve_app import start_server

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        running = start_server(signed_run, port=_free_port(), num_cpus=0.5)
        yield running
    finally:
        serve.shutdown()
        ray.shutdown()


def _post(url: str, body: bytes | dict) -> tuple[int, dict, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    return _send(req)


def _get(url: str) -> tuple[int, dict, dict]:
    return _send(urllib.request.Request(url))


def _send(req: urllib.request.Request) -> tuple[int, dict, dict]:
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def _greedy_reference(run_dir: Path, prompt: str, max_new: int) -> str:
    """Greedy continuation by base + round 1's adapter applied through peft (not merged),
    outside Ray and the server."""
    base = run_dir.parent / "base"
    tok = load_tokenizer(base)
    state = RunDir(run_dir).load_global(1)
    model = attach_lora(load_base(BaseModelSpec(path=str(base))), LoraSpec(), adapter_rank(state))
    set_adapter_state(model, state)
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.eval().generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
    new = out[0, ids.shape[1] :].tolist()
    if tok.eos_token_id in new:
        new = new[: new.index(tok.eos_token_id)]
    return tok.decode(new, skip_special_tokens=True)


def _expected_stamp(run_dir: Path) -> dict:
    from fl_ray.receipts.verify import verify_run

    result = verify_run(run_dir)
    return {"run": RUN_NAME, "round": 1, "receipt": result.receipt_hashes[1]}


def _assert_stamped(headers: dict, stamp: dict) -> None:
    lower = {k.lower(): v for k, v in headers.items()}
    assert lower["x-fl-ray-run"] == stamp["run"]
    assert lower["x-fl-ray-round"] == str(stamp["round"])
    assert lower["x-fl-ray-receipt"] == stamp["receipt"]


PROMPT = "How do I renew a parking permit?"


def test_completion_is_the_runs_model_and_names_its_receipt(server, signed_run, tiny_base):
    status, headers, body = _post(
        f"{server.url}/v1/completions",
        {"model": RUN_NAME, "prompt": PROMPT, "max_tokens": 12, "temperature": 0},
    )
    assert status == 200, body
    stamp = _expected_stamp(signed_run)
    _assert_stamped(headers, stamp)
    assert body["fl_ray"] == stamp and body["model"] == RUN_NAME
    assert body["object"] == "text_completion"
    choice = body["choices"][0]
    # greedy decoding of the served round equals the run's own exported merged model
    assert choice["text"] == _greedy_reference(signed_run, PROMPT, 12)
    usage = body["usage"]
    assert usage["prompt_tokens"] == len(
        load_tokenizer(tiny_base)(PROMPT, add_special_tokens=False)["input_ids"]
    )
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert 1 <= usage["completion_tokens"] <= 12
    assert choice["finish_reason"] == ("length" if usage["completion_tokens"] == 12 else "stop")


def test_max_tokens_and_stop_are_honoured(server):
    url = f"{server.url}/v1/completions"
    base = {"model": RUN_NAME, "prompt": "Parking", "temperature": 0}
    _, _, full = _post(url, {**base, "max_tokens": 24})
    text = full["choices"][0]["text"]
    _, _, short = _post(url, {**base, "max_tokens": 3})
    assert short["usage"]["completion_tokens"] <= 3 and text.startswith(short["choices"][0]["text"])
    # a stop string taken from the middle of the greedy text: output ends right before it
    cut = len(text) // 2
    stop = text[cut : cut + 2]
    assert stop.strip(), f"greedy text too short to pick a stop string from: {text!r}"
    _, _, stopped = _post(url, {**base, "max_tokens": 24, "stop": [stop]})
    assert stopped["choices"][0]["text"] == text[: text.index(stop)]
    assert stopped["choices"][0]["finish_reason"] == "stop"


def test_sampling_follows_seed_and_temperature(server):
    url = f"{server.url}/v1/completions"
    body = {"model": RUN_NAME, "prompt": "Parking", "max_tokens": 16, "temperature": 1.5}
    texts = [_post(url, {**body, "seed": s})[2]["choices"][0]["text"] for s in (1, 1, 2, 3)]
    assert texts[0] == texts[1]  # same seed, same sample
    assert len(set(texts[1:])) > 1  # different seeds at high temperature: different samples


def test_chat_uses_the_chat_template(server, signed_run, tiny_base):
    messages = [{"role": "user", "content": PROMPT}]
    status, headers, body = _post(
        f"{server.url}/v1/chat/completions",
        {"model": RUN_NAME, "messages": messages, "max_tokens": 10, "temperature": 0},
    )
    assert status == 200, body
    _assert_stamped(headers, _expected_stamp(signed_run))
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    tok = load_tokenizer(tiny_base)
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|assistant|>")  # the demo tokenizer's template, as in training
    expected = _greedy_reference(signed_run, prompt, 10)
    assert body["choices"][0]["message"]["content"] == expected


def test_models_and_healthz(server, signed_run):
    stamp = _expected_stamp(signed_run)
    status, headers, models = _get(f"{server.url}/v1/models")
    assert status == 200 and [m["id"] for m in models["data"]] == [RUN_NAME]
    assert models["data"][0]["fl_ray"] == stamp
    _assert_stamped(headers, stamp)
    status, headers, health = _get(f"{server.url}/healthz")
    assert status == 200 and health["status"] == "ok" and health["fl_ray"] == stamp
    _assert_stamped(headers, stamp)


@pytest.mark.parametrize(
    "body,status,param",
    [
        (b'{"model": "served", "prompt": ', 400, None),  # malformed JSON
        (b"[1, 2]", 400, None),  # JSON, but not an object
        ({"prompt": "x"}, 400, "model"),  # missing field
        ({"model": RUN_NAME, "prompt": "x", "max_tokens": "lots"}, 400, "max_tokens"),
        ({"model": RUN_NAME, "prompt": "x", "temperature": "0.5"}, 400, "temperature"),
        ({"model": RUN_NAME, "prompt": "x", "temperature": 7}, 400, "temperature"),
        ({"model": RUN_NAME, "prompt": "x", "max_tokens": 100_000}, 400, "max_tokens"),
        ({"model": RUN_NAME, "prompt": "x " * 300, "max_tokens": 400}, 400, "max_tokens"),
        ({"model": RUN_NAME, "prompt": "", "max_tokens": 4}, 400, "prompt"),
        ({"model": RUN_NAME, "prompt": "x", "stream": True}, 400, "stream"),
        ({"model": "gpt-4", "prompt": "x"}, 404, "model"),
    ],
)
def test_bad_requests_get_4xx_json_errors(server, signed_run, body, status, param):
    got, headers, err = _post(f"{server.url}/v1/completions", body)
    assert got == status, err
    assert set(err) == {"error"} and err["error"]["message"] and err["error"]["param"] == param
    _assert_stamped(headers, _expected_stamp(signed_run))


def test_bad_chat_and_unknown_route(server):
    got, _, err = _post(f"{server.url}/v1/chat/completions", {"model": RUN_NAME, "messages": []})
    assert got == 400 and err["error"]["param"] == "messages"
    bad_role = {"model": RUN_NAME, "messages": [{"role": "wizard", "content": "hi"}]}
    got, _, err = _post(f"{server.url}/v1/chat/completions", bad_role)
    assert got == 400 and err["error"]["param"] == "messages.0.role"
    got, _, err = _get(f"{server.url}/v1/engines")
    assert got == 404 and "error" in err


def test_openai_client_gets_the_same_completion(server):
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    got = client.completions.create(model=RUN_NAME, prompt=PROMPT, max_tokens=12, temperature=0)
    _, _, direct = _post(
        f"{server.url}/v1/completions",
        {"model": RUN_NAME, "prompt": PROMPT, "max_tokens": 12, "temperature": 0},
    )
    assert got.choices[0].text == direct["choices"][0]["text"]
    assert got.usage.total_tokens == direct["usage"]["total_tokens"]
    chat = client.chat.completions.create(
        model=RUN_NAME, messages=[{"role": "user", "content": PROMPT}], max_tokens=8, temperature=0
    )
    assert chat.choices[0].message.role == "assistant"
    assert [m.id for m in client.models.list()] == [RUN_NAME]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x", max_tokens=2)


def _tampered_copy(run_dir: Path, tmp_path: Path, relative: str) -> Path:
    copy = tmp_path / RUN_NAME
    shutil.copytree(run_dir, copy)
    target = copy / relative
    blob = bytearray(target.read_bytes())
    blob[len(blob) // 2] ^= 0x01  # one bit of one byte
    target.write_bytes(bytes(blob))
    return copy


@pytest.mark.parametrize(
    "relative", ["rounds/00001/receipt.json", "rounds/00001/global.safetensors"]
)
def test_serve_refuses_a_tampered_run(signed_run, tmp_path, relative):
    copy = _tampered_copy(signed_run, tmp_path, relative)
    proc = _cli("serve", str(copy), "--port", str(_free_port()), "--no-block", timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fl-ray serve: refused:"), proc.stderr
    assert "round 1" in lines[0] or "00001" in lines[0], lines[0]
    assert "serving" not in proc.stdout  # nothing was deployed


def test_files_changed_after_verification_are_refused(signed_run, tmp_path):
    """The adapter handed to replicas, and the base each replica loads, must be the ones the
    verified receipt signs, even if a file changes after verification."""
    from fl_ray.serving.engine import Engine, read_served_round
    from fl_ray.serving.provenance import ProvenanceError, verify_provenance

    copy = tmp_path / "run"
    shutil.copytree(signed_run, copy)
    prov = verify_provenance(copy)
    served = read_served_round(copy, prov)
    base = tmp_path / "other-base"
    shutil.copytree(served.base_model.path, base)
    weights = base / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0x01
    weights.write_bytes(bytes(blob))
    moved = dataclasses.replace(
        served, base_model=served.base_model.model_copy(update={"path": str(base)})
    )
    with pytest.raises(ProvenanceError, match="base_fingerprint differs"):
        Engine.load(moved)
    shutil.copyfile(
        copy / "rounds/00000/global.safetensors", copy / "rounds/00001/global.safetensors"
    )
    with pytest.raises(ProvenanceError, match="not the one its receipt signs"):
        read_served_round(copy, prov)


def test_serve_rejects_bad_arguments_with_exit_2(signed_run, tmp_path, capsys):
    from fl_ray.cli import main

    assert main(["serve", str(tmp_path / "no-such-run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a run directory" in err
    assert main(["serve", str(signed_run), "--round", "7"]) == 2
    assert "round 7 is not a complete round" in capsys.readouterr().err
    assert main(["serve", str(signed_run), "--replicas", "0"]) == 2
    assert "serve.replicas" in capsys.readouterr().err


def test_provenance_names_the_requested_round(signed_run):
    from fl_ray.receipts.verify import verify_run
    from fl_ray.serving.provenance import verify_provenance

    hashes = verify_run(signed_run).receipt_hashes
    for round_num in (0, 1):
        prov = verify_provenance(signed_run, round_num)
        assert (prov.run, prov.round, prov.receipt) == (RUN_NAME, round_num, hashes[round_num])
    assert verify_provenance(signed_run).round == 1  # default: the last complete round
    assert verify_provenance(signed_run, 0).adapter_hash != prov.adapter_hash


def test_deployment_options_from_recipe_and_flags(tiny_base, tmp_path):
    from fl_ray.config import parse_recipe
    from fl_ray.on_ray.serve_app import ServeArgs, deployment_options, serve_spec

    tree = recipe_tree(tiny_base, tmp_path, tmp_path, serve={"replicas": 2, "num_cpus": 0.5})
    run_dir = RunDir.create(parse_recipe(tree, check_paths=False), {"run_name": "t"}).root
    options = deployment_options(serve_spec(run_dir, ServeArgs(run_dir=str(run_dir))))
    assert options["num_replicas"] == 2 and "autoscaling_config" not in options
    assert options["ray_actor_options"]["num_cpus"] == 0.5
    assert options["ray_actor_options"]["num_gpus"] == 0.0
    args = ServeArgs(run_dir=str(run_dir), min_replicas=1, max_replicas=3, num_gpus=1)
    options = deployment_options(serve_spec(run_dir, args))
    assert options["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 3,
        "initial_replicas": 1,
    }
    assert "num_replicas" not in options and options["ray_actor_options"]["num_gpus"] == 1
    with pytest.raises(ValueError, match="serve.replicas"):
        serve_spec(run_dir, ServeArgs(run_dir=str(run_dir), replicas=0))
    inverted = ServeArgs(run_dir=str(run_dir), min_replicas=2, max_replicas=1)
    with pytest.raises(ValueError, match="max_replicas 1 is below min_replicas 2"):
        deployment_options(serve_spec(run_dir, inverted))


def test_serve_config_yaml_is_a_valid_serve_config():
    from ray.serve.schema import ServeDeploySchema

    from fl_ray.on_ray.serve_app import ServeArgs, build_app

    path = Path(__file__).resolve().parents[2] / "serve_config.yaml"
    config = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    (app,) = config.applications
    module, _, name = app.import_path.partition(":")
    assert module == "fl_ray.on_ray.serve_app" and name == "build_app"
    assert ServeArgs.model_validate(app.args).run_dir == "runs/demo"
    assert build_app.__name__ == name
