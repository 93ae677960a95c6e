"""VDC: evaluation logic on fixed answers, question files, cascade selection, the two
answering paths on tiny random-weight LLaVA and Qwen2-VL models (they must agree), BLIP-2 and
InstructBLIP (OPT / Llama / T5 language models) on the generate path, the answer cache, offline
errors, and the detector through run_audit and the Prefect audit flow."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

pytest.importorskip("transformers")

from cleansers.base import DETECTORS, Detector, DetectorResult  # noqa: E402
from cleansers.vdc.cascade import select_rows  # noqa: E402
from cleansers.vdc.evaluate import evaluate_answers, flag_from_s, lemma, mentions, says_yes  # noqa: E402
from cleansers.vdc.questions import load_questions, resolve_questions, template_questions  # noqa: E402
from pipelines.dataset import ImageDataset  # noqa: E402
from pipelines.errors import VetsetError  # noqa: E402

CLASSES = ["airplane", "cat", "pickup_truck"]
# tiny BLIP-2 / InstructBLIP models: name -> (family, language model)
BLIP_ARCHS = {"blip2_opt": ("blip-2", "opt"), "blip2_t5": ("blip-2", "t5"),
              "instructblip_llama": ("instructblip", "llama"), "instructblip_t5": ("instructblip", "t5")}
SHARED_ARCHS = ("llava", "qwen2_vl")  # the archs that take the shared-prefix path


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models on 2 shared cores: intra-op threads only add contention."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from vdc_tiny import build_tiny_blip, build_tiny_llava, build_tiny_qwen2vl, build_tiny_text_llm

    root = tmp_path_factory.mktemp("vdc-models")
    models = {"llava": str(build_tiny_llava(root / "llava")), "qwen2_vl": str(build_tiny_qwen2vl(root / "qwen2vl")),
              "text": str(build_tiny_text_llm(root / "text"))}
    for name, (family, lm) in BLIP_ARCHS.items():
        models[name] = str(build_tiny_blip(root / name, family=family, lm=lm))
    return models


def _dataset(n=6, seed=0, size=32):
    rng = np.random.default_rng(seed)
    return ImageDataset(images=rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8),
                        labels=np.arange(n) % len(CLASSES), class_names=CLASSES,
                        sample_ids=[f"r{seed}-{i}" for i in range(n)])


def _questions(ds, kind=None):
    """The template questions about each row's label (only ``kind`` ones if given) and its terms."""
    qs = template_questions(CLASSES)
    questions = [[q for q in qs.for_class(CLASSES[k]) if kind in (None, q.kind)] for k in ds.labels]
    return questions, [qs.classes[CLASSES[k]].terms for k in ds.labels]


def _assert_same_answers(questions, a, b, *, first_token_only=False):
    """Two backends gave the same greedy answers. first_token_only: ``a`` read a yes/no answer
    from the first token (shared path), ``b`` generated a few tokens starting with it."""
    for i, q_row in enumerate(questions):
        for j, q in enumerate(q_row):
            x, y = a[i][j], b[i][j]
            if q.kind == "yesno":
                assert y.text.startswith(x.text) if first_token_only else y.text == x.text, (i, j, x, y)
                assert says_yes(x.text) == says_yes(y.text)
                assert np.isfinite(x.p_yes) and x.p_yes == pytest.approx(y.p_yes, abs=1e-4)
            else:
                assert x.text == y.text, (i, j, x, y)
    # the descriptions really were generated (random weights still emit words)
    assert any(a[i][0].text for i in range(len(questions)))


# ------------------------------------------------------------------ evaluation on fixed answers
def test_yes_no_parsing():
    assert says_yes("Yes.") and says_yes("yes, it does") and says_yes("YES") and says_yes(" Yeah")
    assert not says_yes("No.") and not says_yes("") and not says_yes("The image shows yes") and not says_yes("maybe")


def test_label_matching_lemmatises_and_matches_phrases():
    assert lemma("airplanes") == "airplane" and lemma("ponies") == "pony" and lemma("wolves") == "wolf"
    assert lemma("bus") == "bus" and lemma("glass") == "glass" and lemma("boxes") == "box"
    assert mentions("Two airplanes parked at the gate", ["airplane"])
    assert mentions("Some pickup trucks on a road.", ["pickup truck"])
    assert mentions("a pickup_truck", ["pickup truck"])
    assert not mentions("a truck", ["pickup truck"])  # a phrase needs all its words
    assert not mentions("a catalogue of planes", ["cat"])  # whole words only
    assert mentions("A kitten sleeps", ["cat", "kitten"])


@pytest.mark.parametrize("answers,expected_s,flagged", [
    (["yes", "yes", "Yes.", "no", "A plane in the sky.", "nothing"], 4 / 6, False),
    (["yes", "no", "no", "yes", "An airplane.", "a dog"], 3 / 6, False),  # s == alpha: not dirty (strict <)
    (["no", "no", "yes", "no", "A dog.", "A cat."], 1 / 6, True),
    (["no", "no", "no", "no", "", ""], 0.0, True),
])
def test_score_share_of_consistent_answers(answers, expected_s, flagged):
    kinds = ["yesno"] * 4 + ["describe"] * 2
    v = evaluate_answers(kinds, answers, ["airplane", "plane"])
    assert v.asked == 6 and v.s == pytest.approx(expected_s)
    assert bool(flag_from_s(np.array([v.s]), 0.5)[0]) is flagged


def test_flag_is_strict_and_nan_is_never_flagged():
    s = np.array([0.5, 0.4999, 0.0, np.nan, 1.0])
    assert flag_from_s(s, 0.5).tolist() == [False, True, True, False, False]


def test_judge_verdicts_count_only_for_descriptions():
    kinds = ["yesno", "describe"]
    assert evaluate_answers(kinds, ["no", "a jet"], ["airplane"], judged={1: True}).consistent == 1
    assert evaluate_answers(kinds, ["no", "a jet"], ["airplane"], judged={1: False}).consistent == 0
    assert evaluate_answers(kinds, ["no", "a jet"], ["airplane"], judged={0: True}).consistent == 0


def test_embedding_judge_offline():
    from cleansers.vdc.evaluate import EmbeddingJudge

    judge = EmbeddingJudge()
    classes = [["airplane", "plane", "jet"], ["dog", "puppy"], ["cat", "kitten"]]
    got = judge.judge(["A small aircraft flying in a blue sky.", "A brown dog sitting on grass.",
                       "A brown dog sitting on grass."], [classes[0], classes[1], classes[2]], classes)
    assert got.tolist() == [True, True, False]


# ------------------------------------------------------------------ questions
def test_template_questions_and_json_round_trip(tmp_path):
    qs = template_questions(CLASSES)
    air = qs.for_class("airplane")
    assert [q.kind for q in air] == ["describe", "describe", "yesno", "yesno", "yesno", "yesno"]
    assert "Is there an airplane in the image?" in [q.text for q in air]
    assert "plane" in qs.classes["airplane"].terms and "pickup truck" in qs.classes["pickup_truck"].terms
    path = qs.save(tmp_path / "q.json")
    again = load_questions(path)
    assert again.to_json() == qs.to_json()


def test_question_file_is_written_then_reused_with_user_edits(tmp_path):
    path = tmp_path / "q.json"
    _, origin = resolve_questions(CLASSES, str(path))
    assert origin == "templates" and path.exists()
    raw = json.loads(path.read_text())
    raw["classes"]["cat"]["questions"] = [{"type": "yesno", "text": "Is this a cat?"}]
    raw["classes"]["cat"]["synonyms"] = ["moggy"]
    path.write_text(json.dumps(raw))
    qs, origin = resolve_questions(CLASSES, str(path))
    assert origin.startswith("file:")
    assert [q.text for q in qs.classes["cat"].questions] == ["Is this a cat?"]
    assert "moggy" in qs.classes["cat"].terms
    with pytest.raises(VetsetError, match="dog"):
        resolve_questions(CLASSES + ["dog"], str(path))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(VetsetError, match="not valid JSON"):
        load_questions(tmp_path / "bad.json")


def test_llm_question_generation_and_llm_judge_run_on_a_tiny_text_model(tiny_models, tmp_path):
    from cleansers.vdc.backends import TextLLM
    from cleansers.vdc.evaluate import LLMJudge

    llm = TextLLM(tiny_models["text"], device="cpu")
    qs, origin = resolve_questions(CLASSES, str(tmp_path / "q.json"), llm_factory=lambda: llm)
    assert origin == "llm"
    saved = load_questions(tmp_path / "q.json")
    for c in CLASSES:  # whatever the random LLM wrote, every class keeps 4 yes/no questions
        assert len([q for q in saved.classes[c].questions if q.kind == "yesno"]) == 4
    verdict = LLMJudge(llm).judge(["an airplane", "a dog"], [["airplane"], ["airplane"]])
    assert verdict.dtype == bool and verdict.shape == (2,)


# ------------------------------------------------------------------ cascade
def test_cascade_selection():
    score = np.array([0.9, 0.1, 0.5, np.nan, 0.7, 0.3])
    prior = {"cheap": DetectorResult("cheap", score, score > 0.8)}
    assert select_rows(6, prior, None).all()
    assert np.flatnonzero(select_rows(6, prior, "cheap", top_k=2)).tolist() == [0, 4]
    assert np.flatnonzero(select_rows(6, prior, "cheap", fraction=0.4)).tolist() == [0, 4]  # ceil(0.4*5) = 2
    assert np.flatnonzero(select_rows(6, prior, "cheap", band=[0.3, 0.7])).tolist() == [2, 4, 5]
    assert np.flatnonzero(select_rows(6, prior, "cheap", band=[0.3, 0.5], include_flagged=True)).tolist() == [0, 2, 5]
    with pytest.raises(VetsetError, match="has not run before vdc"):
        select_rows(6, prior, "abl", top_k=1)
    with pytest.raises(VetsetError, match="needs cascade_top_k"):
        select_rows(6, prior, "cheap")
    # the earlier result covers every row; VDC sees only the readable ones (AuditContext.rows)
    rows = np.array([1, 2, 4, 5])  # row 0 and row 3 unreadable
    assert np.flatnonzero(select_rows(4, prior, "cheap", top_k=1, rows=rows)).tolist() == [2]  # row 4: 0.7
    with pytest.raises(VetsetError, match="cannot line them up"):
        select_rows(5, prior, "cheap", top_k=1)


# ------------------------------------------------------------------ backends
@pytest.mark.parametrize("arch", ["llava", "qwen2_vl"])
def test_shared_prefix_path_agrees_with_plain_generate(tiny_models, arch):
    from cleansers.vdc.backends import VLMBackend

    ds = _dataset(5)
    questions, terms = _questions(ds)
    shared = VLMBackend(tiny_models[arch], device="cpu", batch_size=4, prefix_sharing="auto", describe_max_new_tokens=10)
    plain = VLMBackend(tiny_models[arch], device="cpu", batch_size=7, prefix_sharing="off", describe_max_new_tokens=10)
    assert shared.shared and not plain.shared
    a, b = shared.answer(ds.images, questions, terms), plain.answer(ds.images, questions, terms)
    assert shared.stats["prefix_forwards"] == 2 and shared.stats["generate_calls"] == 0
    assert shared.stats["suffix_forwards"] == 2 * 6  # one per question slot and batch: prefix reused
    assert plain.stats["prefix_forwards"] == 0 and plain.stats["generate_calls"] > 0
    _assert_same_answers(questions, a, b, first_token_only=True)


@pytest.mark.parametrize("arch", list(BLIP_ARCHS))
def test_blip_models_answer_through_batched_generate(tiny_models, arch):
    """BLIP-2 / InstructBLIP: no chat template (plain-text prompt), never the shared prefix (not
    even with prefix_sharing="on"), and batching (padding) does not change the answers."""
    import torch

    from cleansers.vdc.backends import VLMBackend

    ds = _dataset(5)
    questions, terms = _questions(ds)
    wide = VLMBackend(tiny_models[arch], device="cpu", batch_size=7, prefix_sharing="on",
                      describe_max_new_tokens=10)
    narrow = VLMBackend(tiny_models[arch], device="cpu", batch_size=2, describe_max_new_tokens=10)
    assert not wide.shared and not narrow.shared and wide.no_sharing
    assert ("Q-Former reads the question" in wide.no_sharing) == arch.startswith("instructblip")
    assert wide.encoder_decoder == arch.endswith("t5")
    assert wide.prompt("Is there a cat?") == "Question: Is there a cat? Answer:"
    a, b = wide.answer(ds.images, questions, terms), narrow.answer(ds.images, questions, terms)
    # 20 yes/no + 10 description pairs: 3 + 2 calls of 7; by 2 images: 4+4+2 and 2+2+1 calls
    assert wide.stats == {"prefix_forwards": 0, "suffix_forwards": 0, "decode_steps": 0, "generate_calls": 5}
    assert narrow.stats["generate_calls"] == 15
    _assert_same_answers(questions, a, b)
    assert all(np.isnan(a[i][j].p_yes) for i, q_row in enumerate(questions)
               for j, q in enumerate(q_row) if q.kind == "describe")
    if arch.startswith("instructblip"):  # why nothing is shared: one image, two questions, two sets of image tokens
        enc = wide._encode([wide.prompt("Is there a cat?"), wide.prompt("Describe the image in detail.")],
                           [ds.images[0]] * 2)
        with torch.inference_mode():
            feats = wide.model.get_image_features(pixel_values=enc["pixel_values"],
                                                  qformer_input_ids=enc["qformer_input_ids"],
                                                  qformer_attention_mask=enc["qformer_attention_mask"]).pooler_output
        assert not torch.allclose(feats[0], feats[1])


@pytest.mark.parametrize("arch", ["llava", "blip2_opt", "instructblip_t5"])
def test_descriptions_stop_once_the_label_appears(tiny_models, arch):
    from cleansers.vdc.backends import VLMBackend

    ds = _dataset(3)
    questions, _ = _questions(ds, "describe")
    be = VLMBackend(tiny_models[arch], device="cpu", prefix_sharing="off", describe_max_new_tokens=12)
    free = be.answer(ds.images, questions, [["zzz"]] * 3)  # a term that never appears: full length
    words = free[0][0].text.split()
    # make the first word that is new after the 1st one row 0's "class name" (random weights
    # often repeat one word: then the 1st)
    k = next((k for k in range(1, len(words)) if words[k] not in words[:k]), 0)
    stopped = be.answer(ds.images, questions, [[words[k]], ["zzz"], ["zzz"]])
    assert stopped[0][0].text.split() == words[:k + 1] and len(words) > k + 1
    shared = VLMBackend(tiny_models[arch], device="cpu", prefix_sharing="on", describe_max_new_tokens=12)
    assert shared.answer(ds.images, questions, [[words[k]], ["zzz"], ["zzz"]])[0][0].text == stopped[0][0].text
    assert stopped[1][0].text == free[1][0].text


def test_model_not_available_locally_is_a_one_line_error(tmp_path, monkeypatch):
    from cleansers.vdc.backends import VLMBackend

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(VetsetError) as err:
        VLMBackend("llava-hf/llava-1.5-7b-hf")
    assert "\n" not in str(err.value) and "huggingface-cli download" in str(err.value)
    with pytest.raises(VetsetError, match="no such model folder"):
        VLMBackend(str(tmp_path / "nope"))
    with pytest.raises(VetsetError, match="needs model="):
        VLMBackend("")


# ------------------------------------------------------------------ the detector
class _Prior(Detector):
    name = "vdc_test_prior"

    def score(self, data, ctx):
        s = np.linspace(0, 1, len(data))
        return DetectorResult(self.name, s, s > 0.9)


if "vdc_test_prior" not in DETECTORS:
    DETECTORS.register("vdc_test_prior")(_Prior)


@pytest.mark.parametrize("arch", ["qwen2_vl", *BLIP_ARCHS])
def test_detector_through_run_audit_with_cache_and_cascade(tiny_models, tmp_path, arch):
    from cleansers.audit import run_audit
    from pipelines.outputs import RunPaths

    ds = _dataset(6)
    opts = {"model": tiny_models[arch], "cache_dir": str(tmp_path / "cache"), "judge": "none",
            "questions": str(tmp_path / "q.json"), "describe_max_new_tokens": 6, "device": "cpu"}
    first = run_audit(ds, ["vdc"], RunPaths(tmp_path / "run1"), run_id="r1", options={"vdc": opts})
    info = first.results[0].info
    assert info["rows_asked"] == 6 and info["answers_new"] == 36 and info["answers_cached"] == 0
    assert info["path"] == ("shared" if arch in SHARED_ARCHS else "generate") and (tmp_path / "q.json").exists()
    assert (info["path_note"] is None) == (arch in SHARED_ARCHS)
    assert (info["backend_stats"]["prefix_forwards"] > 0) == (arch in SHARED_ARCHS)
    scores = pd.read_parquet(tmp_path / "run1" / "scores.parquet")
    s = 1 - scores["vdc_score"].to_numpy()
    assert np.all((s >= 0) & (s <= 1)) and np.allclose(s * 6, np.round(s * 6))  # shares of 6 answers
    assert (scores["vdc_flag"].to_numpy() == (s < 0.5)).all()

    # the cache holds one row per (image, question, model); a re-audit asks nothing
    cache_files = list((tmp_path / "cache").rglob("part-*.parquet"))
    cached = pd.concat([pd.read_parquet(p) for p in cache_files])
    assert len(cached) == 36 and cached[["image_hash", "question"]].drop_duplicates().shape[0] == 36
    again = run_audit(ds, ["vdc"], RunPaths(tmp_path / "run2"), run_id="r2", options={"vdc": opts})
    assert again.results[0].info["answers_new"] == 0 and again.results[0].info["answers_cached"] == 36
    np.testing.assert_array_equal(again.results[0].score, first.results[0].score)

    # two new rows: only those are asked; the cascade sends the top 3 rows of a cheaper detector
    bigger = ImageDataset(images=np.concatenate([ds.images, _dataset(2, seed=9).images]),
                          labels=np.r_[ds.labels, [0, 1]], class_names=CLASSES,
                          sample_ids=list(ds.sample_ids) + ["n0", "n1"])
    third = run_audit(bigger, ["vdc"], RunPaths(tmp_path / "run3"), run_id="r3", options={"vdc": opts})
    assert third.results[0].info["answers_new"] == 12
    cascade = dict(opts, cascade_from="vdc_test_prior", cascade_top_k=3)
    fourth = run_audit(bigger, ["vdc_test_prior", "vdc"], RunPaths(tmp_path / "run4"), run_id="r4",
                       options={"vdc": cascade})
    vdc = fourth.results[1]
    assert vdc.info["rows_asked"] == 3 and vdc.info["answers_new"] == 0
    assert np.isnan(vdc.score[:5]).all() and not vdc.flag[:5].any()
    np.testing.assert_array_equal(vdc.score[5:], third.results[0].score[5:])


@pytest.mark.parametrize("arch", ["llava", "blip2_opt", "instructblip_llama"])
def test_vdc_through_the_audit_flow(prefect_harness, tiny_models, tmp_path, cifar_dir, arch):
    from conftest import cifar_slice
    from flows.audit import audit_flow
    from flows.params import AuditParams

    pq.write_table(cifar_slice(12), tmp_path / "data.parquet")
    opts = {"model": tiny_models[arch], "cache_dir": str(tmp_path / "cache"), "judge": "embedding",
            "questions": str(tmp_path / "q.json"), "describe_max_new_tokens": 6, "batch_size": 6}
    summary = audit_flow(AuditParams(data=str(tmp_path / "data.parquet"), detectors=["vdc"], device="cpu",
                                     detector_options={"vdc": opts}, out=str(tmp_path / "run")))
    assert summary.rows == 12
    scores = pd.read_parquet(tmp_path / "run" / "scores.parquet")
    assert scores["vdc_score"].notna().all() and scores["vdc_score"].between(0, 1).all()
    assert (scores["vdc_flag"] == (1 - scores["vdc_score"] < 0.5)).all()
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["detectors"]["vdc"]["answers_new"] == 72
    assert manifest["detectors"]["vdc"]["path"] == ("shared" if arch in SHARED_ARCHS else "generate")
    assert manifest["detectors"]["vdc"]["judge"].startswith("embedding:")
    q = load_questions(tmp_path / "q.json")
    assert "airplane" in q.classes  # CIFAR-10 class names from the data
