"""Deterministic demo data for four government-department silos (English + Traditional Chinese).

Each department gets its own templates and topics, so the silos are non-IID: a transport silo never
sees a tax question. Every answer restates the instruction's slot values in a fixed answer template
of its department, making the answer a learnable function of the instruction for a tiny model.
The eval split uses slot combinations that never occur in train (in either language), so eval
measures generalisation to unseen values rather than recall.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

DEPARTMENTS: tuple[str, ...] = ("transport", "housing", "revenue", "health")

Pair = tuple[str, str]  # (English, Traditional Chinese) surface forms of one slot value
_LANGS = ("en", "zh")  # alternated so every split is half English, half Chinese
_MAX_DRAWS = 20_000  # per example; only a slot space too small for the requested size hits it


def _pairs(spec: str) -> tuple[Pair, ...]:
    """``"Sha Tin=沙田; Tai Po=大埔"`` -> pairs; a string keeps the tables short and aligned."""
    return tuple((en, zh) for en, zh in (item.strip().split("=") for item in spec.split(";")))


def _same(values: Iterable[str]) -> tuple[Pair, ...]:
    """Language-neutral values (route numbers, codes) read the same in both languages."""
    return tuple((v, v) for v in values)


def _money(values: Iterable[int]) -> tuple[Pair, ...]:
    return tuple((f"HK${v:,}", f"{v:,}元") for v in values)


def _hour(h: int) -> Pair:
    if h < 12:
        return f"{h}:00 a.m.", f"上午{h}時"
    return f"{h - 12}:00 p.m.", f"{'下午' if h < 18 else '晚上'}{h - 12}時"


_MONTHS = "January February March April May June July August September October November December"
_WEEKDAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday"

# Slot pools: fixed tuples (no RNG at import), so a slot value is addressed by its index.
_POOLS: dict[str, tuple[Pair, ...]] = {
    "district": _pairs(
        "Sha Tin=沙田; Tsuen Wan=荃灣; Kwun Tong=觀塘; Tuen Mun=屯門; Yuen Long=元朗; Tai Po=大埔;"
        "Wong Tai Sin=黃大仙; Sham Shui Po=深水埗; Central=中環; Wan Chai=灣仔; Mong Kok=旺角;"
        "Kowloon City=九龍城; Tseung Kwan O=將軍澳; Tung Chung=東涌; Sai Kung=西貢;"
        "North Point=北角; Aberdeen=香港仔; Fanling=粉嶺"
    ),
    "route": _same(f"{n}{s}" for n in range(1, 120) for s in ("", "A", "X")),
    "line": _pairs(
        "East Rail Line=東鐵綫; Tsuen Wan Line=荃灣綫; Island Line=港島綫; Kwun Tong Line=觀塘綫;"
        "Tung Chung Line=東涌綫; Tuen Ma Line=屯馬綫; South Island Line=南港島綫;"
        "Tseung Kwan O Line=將軍澳綫; Airport Express=機場快綫; Disneyland Resort Line=迪士尼綫"
    ),
    "road": _pairs(
        "Nathan Road=彌敦道; Hennessy Road=軒尼詩道; Queen's Road=皇后大道; Tai Po Road=大埔道;"
        "Castle Peak Road=青山公路; Tolo Highway=吐露港公路; Lung Cheung Road=龍翔道;"
        "Prince Edward Road=太子道; Argyle Street=亞皆老街; Gloucester Road=告士打道;"
        "King's Road=英皇道; Des Voeux Road=德輔道"
    ),
    "date": tuple(
        (f"{d} {name}", f"{m}月{d}日")
        for m, name in enumerate(_MONTHS.split(), start=1)
        for d in range(1, 29)
    ),
    "time": tuple(_hour(h) for h in (7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22)),
    "weekday": tuple(zip(_WEEKDAYS.split(), (f"星期{c}" for c in "一二三四五六日"), strict=True)),
    "fare": tuple((f"HK${x / 10:.1f}", f"{x / 10:.1f}元") for x in range(45, 400, 5)),
    "size": _same(str(n) for n in range(1, 7)),
    "rent": _money(range(1500, 9001, 100)),
    "monthly_income": _money(range(8000, 40001, 500)),
    "annual_income": _money(range(150_000, 3_000_001, 25_000)),
    "amount": _money(range(1000, 200_001, 1500)),
    "rv": _money(range(60_000, 900_001, 12_000)),
    "appno": _same(f"G{1_000_003 + i * 7919}" for i in range(300)),
    "fileno": _same(f"{i % 9 + 1}R-{3_000_017 + i * 4271}" for i in range(300)),
    "year": _same(f"{y}/{(y + 1) % 100:02d}" for y in range(2018, 2027)),
    "taxtype": _pairs(
        "salaries tax=薪俸稅; profits tax=利得稅; property tax=物業稅;"
        "partnership profits tax=合夥業務利得稅"
    ),
    "deduction": _pairs(
        "charitable donations=慈善捐款; home loan interest=居所貸款利息;"
        "MPF contributions=強積金供款; self-education expenses=個人進修開支;"
        "domestic rent=住宅租金; elderly care expenses=長者住宿照顧開支"
    ),
    "quarter": _pairs(
        "January to March=1月至3月; April to June=4月至6月; July to September=7月至9月;"
        "October to December=10月至12月"
    ),
    "age": _same(str(a) for a in range(6, 86)),
    "vaccine": _pairs(
        "seasonal flu=季節性流感; COVID-19=新冠; measles=麻疹; hepatitis B=乙型肝炎;"
        "pneumococcal=肺炎球菌; tetanus=破傷風; chickenpox=水痘; HPV=人類乳頭瘤病毒"
    ),
    "hospital": _pairs(
        "Prince of Wales Hospital=威爾斯親王醫院; Queen Mary Hospital=瑪麗醫院;"
        "Queen Elizabeth Hospital=伊利沙伯醫院; Tuen Mun Hospital=屯門醫院;"
        "Princess Margaret Hospital=瑪嘉烈醫院; Caritas Medical Centre=明愛醫院;"
        "United Christian Hospital=基督教聯合醫院; Kwong Wah Hospital=廣華醫院;"
        "Tseung Kwan O Hospital=將軍澳醫院; North District Hospital=北區醫院;"
        "Pok Oi Hospital=博愛醫院; Eastern Hospital=東區醫院"
    ),
}


@dataclass(frozen=True)
class _Template:
    """One question type: slots as (slot name, pool name) plus EN and zh (question, answer)."""

    slots: tuple[tuple[str, str], ...]
    en: Pair
    zh: Pair


def _t(slots: str, en_q: str, en_a: str, zh_q: str, zh_a: str) -> _Template:
    """Compact constructor: ``slots`` is space-separated ``name`` or ``name=pool``."""
    parsed = tuple((s.split("=")[0], s.split("=")[-1]) for s in slots.split())
    return _Template(parsed, (en_q, en_a), (zh_q, zh_a))


# Layout kept by hand (fmt: skip): one template per block of EN question/answer, zh question/answer.
_TEMPLATES: dict[str, tuple[_Template, ...]] = {
    "transport": (
        _t("route district", "What are the service hours of bus route {route} in {district}?",
           "Bus route {route} in {district} runs daily from 6 a.m. to midnight, more at peak.",
           "{district}的{route}號巴士服務時間是甚麼？",
           "{district}的{route}號巴士每日由上午6時行駛至午夜，繁忙時間會加密班次。"),
        _t("route a=district b=district", "Does bus route {route} go from {a} to {b}?",
           "Yes, bus route {route} links {a} and {b}; board at the {a} bus terminus.",
           "{route}號巴士是否由{a}前往{b}？",
           "是，{route}號巴士往來{a}及{b}，請在{a}巴士總站上車並於上車時付款。"),
        _t("line fare", "The adult fare on the {line} is {fare}. What do seniors pay?",
           "Seniors pay HK$2 per trip on the {line} instead of the adult fare of {fare}.",
           "{line}成人車費是{fare}，長者要付多少？",
           "60歲或以上長者乘搭{line}每程只需付2元，無需支付{fare}的成人車費。"),
        _t("line time", "How often do trains run on the {line} at {time}?",
           "At {time}, {line} trains run about every 3 minutes; see the station screens.",
           "{time}{line}的列車班次有多密？",
           "{time}{line}的列車大約每3分鐘一班，請留意車站顯示屏的下一班列車時間。"),
        _t("road district date", "Is {road} in {district} closed on {date}?",
           "{road} in {district} is closed on {date}, 10 p.m. to 6 a.m., for roadworks.",
           "{date}{district}的{road}會否封路？",
           "{district}的{road}將於{date}晚上10時至翌日上午6時封閉進行道路工程，請依照改道指示。"),
        _t("route fare", "How do I pay the {fare} fare on bus route {route}?",
           "Pay the {fare} fare on bus route {route} by Octopus card, bank card or exact coins.",
           "{route}號巴士車費{fare}，可以怎樣付款？",
           "{route}號巴士的{fare}車費可用八達通、非接觸式銀行卡或輔幣付款，恕不找贖。"),
        _t("route district", "Where is the green minibus {route} stop in {district}?",
           "The green minibus {route} stop in {district} is beside the railway station exit.",
           "{district}的{route}號綠色小巴站在哪裏？",
           "{district}的{route}號綠色小巴站位於鐵路站出口旁，請留意綠色站牌。"),
        _t("line date", "I lost my bag on the {line} on {date}. What should I do?",
           "Report items lost on the {line} on {date} at any station customer service centre.",
           "我{date}在{line}遺失了袋，應該怎樣做？",
           "請到任何車站客務中心報告{date}在{line}遺失的物品，或致電失物認領熱線。"),
    ),
    "housing": (
        _t("size district", "How can a {size}-person household apply for public housing "
           "in {district}?",
           "A {size}-person household can apply in {district} with the form and income proof.",
           "{size}人家庭如何申請{district}的公屋？",
           "{size}人家庭可遞交申請表連同入息及資產證明，申請{district}的公共租住房屋。"),
        _t("appno district", "My housing application is {appno}. How long is the wait "
           "in {district}?",
           "Application {appno} is queuing for {district}; the average wait is about 5.5 years.",
           "我的公屋申請編號是{appno}，{district}要等多久？",
           "申請編號{appno}正在輪候{district}的單位，一般申請者平均輪候時間約為5.5年。"),
        _t("rent district", "My monthly rent in {district} is {rent}. When is it due?",
           "Rent of {rent} for your {district} flat is due on the first day of each month.",
           "我在{district}的每月租金是{rent}，何時要繳交？",
           "{district}單位每月{rent}的租金須於每月首日繳交，可用自動轉賬或到屋邨辦事處付款。"),
        _t("size rent", "Can a {size}-person household paying {rent} get rent relief?",
           "A {size}-person household paying {rent} may get rent assistance if income is low.",
           "{size}人家庭每月交租{rent}，可否申請租金援助？",
           "每月交租{rent}的{size}人家庭，如入息低於限額，可申請租金援助計劃。"),
        _t("size income=monthly_income", "Our {size}-person household earns {income} a month. "
           "Can we apply for public housing?",
           "A {size}-person household earning {income} a month is checked against the limit.",
           "我們{size}人家庭每月入息{income}，可以申請公屋嗎？",
           "{size}人家庭每月入息{income}，須先與現行入息限額比較，符合資格才會接納申請。"),
        _t("a=district b=district", "How do I request a housing transfer from {a} to {b}?",
           "To move from {a} to {b}, apply at your {a} estate office with your tenancy details.",
           "如何申請由{a}調遷往{b}的公屋？",
           "如欲由{a}調遷往{b}，請帶同租約資料到{a}屋邨辦事處遞交調遷申請。"),
        _t("district date", "Repairs for my flat in {district} are on {date}. Must I stay home?",
           "Yes, an adult must stay in the {district} flat on {date} to let the repair team in.",
           "我{district}單位的維修安排在{date}，需要留在家嗎？",
           "需要，{date}請安排一名成年人留在{district}單位，讓維修人員進入完成工程。"),
        _t("appno date", "My housing interview for {appno} is on {date}. What should I bring?",
           "Bring identity cards, income proof and the letter to the {appno} interview on {date}.",
           "申請編號{appno}的公屋面談在{date}，要帶甚麼？",
           "{date}出席申請編號{appno}的面談時，請帶備身份證、入息證明及通知信。"),
    ),
    "revenue": (
        _t("income=annual_income year", "How is salaries tax charged on {income} for {year}?",
           "For {year}, tax on {income} is the lower of progressive-rate and standard-rate tax.",
           "{year}年度入息{income}的薪俸稅如何計算？",
           "{year}年度入息{income}的薪俸稅按累進稅率或標準稅率計算，以較低者為準。"),
        _t("taxtype year", "When is the deadline to file the {taxtype} return for {year}?",
           "File the {taxtype} return for {year} within one month of issue; e-filing adds a month.",
           "{year}年度{taxtype}報稅表何時截止遞交？",
           "{year}年度{taxtype}報稅表須於發出後一個月內遞交，網上報稅可獲延期一個月。"),
        _t("quarter district", "When are rates for {quarter} due on my flat in {district}?",
           "Rates for {quarter} on your {district} property are due by the end of its first month.",
           "我{district}物業{quarter}的差餉何時到期？",
           "{district}物業{quarter}的差餉須於該季度首月月底前繳付。"),
        _t("rv district", "My flat in {district} has a rateable value of {rv}. "
           "How are rates charged?",
           "Rates on the {district} flat valued at {rv} are 5 percent a year, billed quarterly.",
           "我{district}單位的應課差餉租值是{rv}，差餉如何計算？",
           "{district}單位應課差餉租值{rv}，差餉按每年5%徵收，每季發單一次。"),
        _t("amount taxtype date", "I owe {amount} in {taxtype}. Can I pay after {date}?",
           "Pay your {taxtype} of {amount} by {date}; late payment adds a 5 percent surcharge.",
           "我欠{taxtype}{amount}，可以在{date}之後繳交嗎？",
           "{amount}的{taxtype}應於{date}或之前繳交，逾期繳交會被加收5%附加費。"),
        _t("deduction year", "Can I claim {deduction} for {year}?",
           "Yes, {deduction} can be claimed for {year} in your tax return, up to the set limit.",
           "{year}年度可以申索{deduction}嗎？",
           "可以，{year}年度的{deduction}可在報稅表扣除部分申索，上限按規定計算。"),
        _t("fileno", "How do I update the address for tax file {fileno}?",
           "Update the address of tax file {fileno} through eTAX or the change form in a month.",
           "如何更改稅務檔案{fileno}的地址？",
           "稅務檔案{fileno}的地址可透過網上稅務服務或遞交更改表格更新，請於一個月內辦理。"),
        _t("amount year", "How can I pay a tax bill of {amount} for {year}?",
           "Pay the {year} tax bill of {amount} by online banking, PPS, phone or at a post office.",
           "{year}年度{amount}的稅單可以怎樣繳付？",
           "{year}年度{amount}的稅單可於到期日前經網上銀行、繳費靈、電話或郵政局繳付。"),
    ),
    "health": (
        _t("district weekday", "What are the opening hours of the {district} clinic on {weekday}?",
           "The {district} clinic opens on {weekday} from 9 a.m. to 1 p.m. and 2 p.m. to 5 p.m.",
           "{district}診所{weekday}的開放時間是甚麼？",
           "{district}普通科門診診所{weekday}由上午9時至下午1時及下午2時至5時開放。"),
        _t("age vaccine", "Can a {age}-year-old get the {vaccine} vaccine?",
           "Yes, people aged {age} can get the {vaccine} vaccine at a district health centre.",
           "{age}歲人士可以接種{vaccine}疫苗嗎？",
           "可以，{age}歲人士可到地區康健中心或參與計劃的診所接種{vaccine}疫苗。"),
        _t("vaccine district date", "Please book a {vaccine} vaccination in {district} on {date}.",
           "Your {vaccine} vaccination in {district} is booked for {date}; bring your ID card.",
           "請為我預約{date}在{district}接種{vaccine}疫苗。",
           "已為你申請{date}在{district}接種{vaccine}疫苗，請帶備身份證及疫苗接種紀錄。"),
        _t("hospital time", "How long is the A&E wait at {hospital} at {time}?",
           "At {time}, non-urgent A&E patients at {hospital} may wait over 2 hours.",
           "{time}{hospital}急症室要等多久？",
           "{time}在{hospital}急症室，非緊急病人可能需等候超過2小時，危殆個案會即時處理。"),
        _t("hospital weekday", "I am going to A&E at {hospital} on {weekday}. What do I bring?",
           "For A&E at {hospital} on {weekday}, bring your identity card and a list of medicines.",
           "我{weekday}要去{hospital}急症室，要帶甚麼？",
           "{weekday}到{hospital}急症室求診，請帶備身份證、藥物清單及急症室收費。"),
        _t("district time date", "Can I book the {district} clinic for {time} on {date}?",
           "Phone to book the {district} clinic at {time} on {date}; arrive 15 minutes early.",
           "可否預約{date}{time}到{district}診所看病？",
           "請致電電話預約熱線預約{date}{time}的{district}診所籌號，並提早15分鐘到達。"),
        _t("age district", "Where can a {age}-year-old get a health check in {district}?",
           "A {age}-year-old can get a health check at the {district} district health centre.",
           "{age}歲人士在{district}哪裏可以做身體檢查？",
           "{age}歲人士可到{district}地區康健中心做身體檢查，可網上或電話預約。"),
        _t("district weekday", "Is the {district} dental clinic open on {weekday}?",
           "The {district} dental clinic gives free emergency care on {weekday} from 9 a.m.",
           "{district}牙科診所{weekday}有開放嗎？",
           "{district}政府牙科診所{weekday}上午提供免費緊急牙科服務，上午9時派籌。"),
    ),
}  # fmt: skip


def _draw(
    rng: random.Random, templates: Sequence[_Template]
) -> tuple[tuple[int, ...], dict[str, int]]:
    """Pick a template and slot-value indices; slots sharing a pool get distinct values."""
    t_idx = rng.randrange(len(templates))
    template = templates[t_idx]
    chosen: dict[str, int] = {}
    for pool in dict.fromkeys(p for _, p in template.slots):  # ordered, de-duplicated
        names = [n for n, p in template.slots if p == pool]
        for name, idx in zip(names, rng.sample(range(len(_POOLS[pool])), len(names)), strict=True):
            chosen[name] = idx
    key = (t_idx, *(chosen[n] for n, _ in template.slots))
    return key, chosen


def _render(template: _Template, chosen: dict[str, int], lang: str) -> dict[str, str]:
    side = 0 if lang == "en" else 1
    values = {n: _POOLS[p][chosen[n]][side] for n, p in template.slots}
    question, answer = template.en if lang == "en" else template.zh
    return {"instruction": question.format(**values), "answer": answer.format(**values)}


def _department_examples(
    dept: str, seed: int, train_n: int, eval_n: int
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Unique slot combinations per department; eval takes the combinations drawn after train's."""
    # Integer seed arithmetic, never hash(dept): str hashes change with PYTHONHASHSEED.
    rng = random.Random(seed * 1000 + DEPARTMENTS.index(dept))
    templates = _TEMPLATES[dept]
    # The key ignores language, so an eval combination is unseen in train even in translation.
    seen: set[tuple[int, ...]] = set()
    records: list[dict[str, str]] = []
    for i in range(train_n + eval_n):
        for _ in range(_MAX_DRAWS):
            key, chosen = _draw(rng, templates)
            if key not in seen:
                break
        else:
            raise ValueError(f"{dept}: slot space too small for {train_n + eval_n} examples")
        seen.add(key)
        records.append(_render(templates[key[0]], chosen, _LANGS[i % 2]))
    train, evals = records[:train_n], records[train_n:]
    rng.shuffle(train)  # break the strict EN/zh alternation while staying deterministic
    rng.shuffle(evals)
    return train, evals


def _write_jsonl(path: Path, records: Iterable[dict[str, str]]) -> None:
    """Write via a temp file + ``os.replace`` so readers never see a half-written split."""
    payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def generate_demo_data(
    out_dir: str | Path, seed: int = 0, train_per_silo: int = 240, eval_per_silo: int = 48
) -> dict[str, Path]:
    """Writes out_dir/<dept>/train.jsonl and out_dir/<dept>/eval.jsonl; returns {dept: dept_dir}.

    The same ``seed`` and sizes give byte-identical files. Each line is
    ``{"instruction": ..., "answer": ...}`` in English or Traditional Chinese (half each).
    """
    if train_per_silo < 1 or eval_per_silo < 0:
        raise ValueError("train_per_silo must be >= 1 and eval_per_silo >= 0")
    out = Path(out_dir)
    dirs: dict[str, Path] = {}
    for dept in DEPARTMENTS:
        train, evals = _department_examples(dept, seed, train_per_silo, eval_per_silo)
        dept_dir = out / dept
        dept_dir.mkdir(parents=True, exist_ok=True)
        _write_jsonl(dept_dir / "train.jsonl", train)
        _write_jsonl(dept_dir / "eval.jsonl", evals)
        dirs[dept] = dept_dir
    return dirs
