import re
from collections import Counter

import pytest
import torch

from gradsift.data.llm_benchmarks import (BENCHMARKS, CHATBOT_NAMES, MATH_PREFIX, TRANSFORMATIONS,
                                          LLMBenchmarkDataModule, benchmark_classes, generate_benchmark,
                                          load_benchmark, render_grammar, render_math, save_benchmark)

SENTENCE = re.compile(r"\n    (.*) -> $")


def _skeleton(row: dict) -> str:
    """The row's template: the prompt with its sentence / integers blanked."""
    if "reason" in row or row["prompt"].startswith(MATH_PREFIX):
        return re.sub(r"\d+", "#", row["prompt"])
    return SENTENCE.sub("\n    <S> -> ", row["prompt"])


def _rerender(name: str, row: dict) -> dict:
    """Render a row again from the parameters parsed out of its prompt."""
    if name == "grammars":
        return render_grammar(row["variation"], SENTENCE.search(row["prompt"]).group(1))
    nums = [int(x) for x in re.findall(r"\d+", row["prompt"][len(MATH_PREFIX):])]
    return render_math(row["variation"], nums, with_reason=name == "math_with_reason")


@pytest.mark.parametrize("name", BENCHMARKS)
def test_generator_counts_templates_and_seed(name):
    train, test = generate_benchmark(name, seed=3)
    assert (len(train), len(test)) == (900, 100)
    classes = benchmark_classes(name)
    assert Counter(train["variation"]) == {c: 90 for c in classes}
    assert Counter(test["variation"]) == {c: 10 for c in classes}
    # every template appears, and each row is exactly what its template renders (answers recomputed)
    assert len({_skeleton(r) for r in train}) == 10
    for row in list(train) + list(test):
        assert _rerender(name, row) == row
    if name == "grammars":
        assert {SENTENCE.search(r["prompt"]).group(1) for r in train}.isdisjoint(
            {SENTENCE.search(r["prompt"]).group(1) for r in test})
    again, _ = generate_benchmark(name, seed=3)
    other, _ = generate_benchmark(name, seed=4)
    assert again["text"] == train["text"] and other["text"] != train["text"]


def test_math_with_and_without_reason_share_problems():
    a, _ = generate_benchmark("math_with_reason", seed=0)
    b, _ = generate_benchmark("math_without_reason", seed=0)
    assert a["prompt"] == b["prompt"] and a["answer"] == b["answer"]
    assert a[0]["text"] == a[0]["prompt"] + f"Reason: {a[0]['reason']} Answer: {a[0]['answer']}</s>"
    assert b[0]["text"] == b[0]["prompt"] + f"Answer: {b[0]['answer']}</s>"


def test_known_transformations():
    s = "Whispering winds call night."
    expected = {"Capitalize Every Other Letter": "wHiSpErInG WiNdS CaLl nIgHt.",
                "Double Every Consonant": "WWhhisspperrinngg wwinnddss ccallll nnigghhtt.",
                "Remove All Consonants": "iei i a i.",
                "Add 'ly' To End of Each Word": "Whisperingly windsly callly night.ly"}
    for variation, out in expected.items():
        assert TRANSFORMATIONS[variation](s) == out
    row = render_grammar("Reverse Order of Words", s)
    assert row["prompt"].startswith(CHATBOT_NAMES["Reverse Order of Words"] + " is a chatbot")
    assert row["text"].endswith("->  night. call winds Whispering</s>")
    assert render_math("field_trip", [75, 57, 10], True)["answer"] == 7


@pytest.mark.parametrize("name", BENCHMARKS)
def test_real_release_matches_generator(shared_data, name):
    data_dir = shared_data / "datainf"
    gen_train, _ = generate_benchmark(name, seed=0)
    for split in ("train", "test"):
        real = load_benchmark(name, split, data_dir)
        assert real.column_names == gen_train.column_names
        assert Counter(real["variation"]).keys() == Counter(gen_train["variation"]).keys()
        assert list(dict.fromkeys(real["variation"])) == benchmark_classes(name)
        assert {_skeleton(r) for r in real} == {_skeleton(r) for r in gen_train}
        for row in real:  # every released row is reproduced exactly by the templates
            assert _rerender(name, row) == row


def test_jsonl_and_hf_folder_agree(shared_data, tmp_path):
    hf = load_benchmark("grammars", "test", shared_data / "datainf")
    (tmp_path / "grammars_test.jsonl").write_text((shared_data / "datainf" / "grammars_test.jsonl").read_text())
    js = load_benchmark("grammars", "test", tmp_path)
    assert hf.to_list() == js.to_list()


def test_save_and_load_roundtrip(tmp_path):
    train, _ = generate_benchmark("math_without_reason", seed=1, train_per_class=2, test_per_class=1)
    save_benchmark(train, tmp_path, "math_without_reason", "train")
    assert load_benchmark("math_without_reason", "train", tmp_path).to_list() == train.to_list()
    (tmp_path / "math_without_reason_train.hf").rename(tmp_path / "moved.hf")
    assert load_benchmark("math_without_reason", "train", tmp_path).to_list() == train.to_list()  # from .jsonl
    with pytest.raises(FileNotFoundError, match="data_dir"):
        load_benchmark("grammars", "train", tmp_path)


def test_datamodule_masks_prompt_tokens_exactly():
    dm = LLMBenchmarkDataModule("grammars", generate=True, num_classes=3, train_per_class=4, test_per_class=2,
                                batch_size=5, max_length=128)
    dm.setup()
    assert len(dm.train_set) == 12 and len(dm.test_set) == 6 and dm.num_classes == 3
    tok = dm.tokenizer
    batch = next(iter(dm.attribution_dataloader("train")))
    assert set(batch) == {"input_ids", "attention_mask", "labels", "label", "clean_label", "index"}
    for r in range(len(batch["index"])):
        i = int(batch["index"][r])
        raw = dm.raw["train"][i]
        n_prompt = len(tok(raw["prompt"])["input_ids"])
        n_resp = len(tok(raw["text"][len(raw["prompt"]):-len("</s>")])["input_ids"]) + 1  # + eos
        ids, labels, mask = batch["input_ids"][r], batch["labels"][r], batch["attention_mask"][r]
        assert int(mask.sum()) == n_prompt + n_resp
        assert (labels[:n_prompt] == -100).all() and (labels[n_prompt + n_resp:] == -100).all()
        assert torch.equal(labels[n_prompt:n_prompt + n_resp], ids[n_prompt:n_prompt + n_resp])
        assert tok.decode(ids[n_prompt:n_prompt + n_resp - 1]) == " " + raw["answer"]
        assert int(ids[n_prompt + n_resp - 1]) == tok.eos_token_id
        assert int(batch["label"][r]) == dm.class_names.index(raw["variation"]) == int(batch["clean_label"][r])
    assert not dm.noise_mask.any()


def test_datamodule_errors():
    with pytest.raises(ValueError, match="data.data_dir"):
        LLMBenchmarkDataModule("grammars")
    with pytest.raises(ValueError, match="data.benchmark"):
        LLMBenchmarkDataModule("poetry", generate=True)
    dm = LLMBenchmarkDataModule("grammars", generate=True, num_classes=1, train_per_class=1, test_per_class=1,
                                max_length=4)
    with pytest.raises(ValueError, match="max_length"):
        dm.setup()
