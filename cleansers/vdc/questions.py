"""VDC question sets: per class, general (description) and label-specific yes/no questions,
plus the class's synonyms. Built from templates, or generated once by a local text LLM, and
saved as JSON that the user can review and edit and later runs reuse (``questions`` option).

JSON format (version 1)::

    {"version": 1,
     "general": [{"type": "describe", "text": "Describe the image in detail."}, ...],
     "classes": {"airplane": {"synonyms": ["plane", "aircraft", "jet"],
                              "questions": [{"type": "yesno", "text": "Is there an airplane in the image?",
                                             "source": "template"}, ...]}, ...}}

``general`` questions are asked about every row; a row's answer to one is consistent when it
names the row's class (or a synonym), else the judge decides. ``yesno`` questions expect "yes".
A class may also list its own ``describe`` questions.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.atomic import atomic_write_json
from pipelines.errors import VetsetError

KINDS = ("yesno", "describe")

# the paper's two general questions (Zhu et al., ICLR 2024, appendix: "Describe the image
# briefly" style); open descriptions whose answers should name the object
GENERAL_QUESTIONS = ("Describe the image in detail.", "What is the main object in this image?")

# synonyms and two visual-attribute questions for classes users meet most (CIFAR-10); the
# authors generated theirs with ChatGPT once and shipped them; these are written by hand
KNOWN_CLASSES: dict[str, dict] = {
    "airplane": {"synonyms": ["plane", "aeroplane", "aircraft", "jet", "airliner"],
                 "attributes": ["Does the object in the image have wings?", "Is the object in the image an aircraft?"]},
    "automobile": {"synonyms": ["car", "auto", "sedan", "vehicle", "motorcar"],
                   "attributes": ["Does the object in the image have four wheels?", "Is the object in the image a car?"]},
    "bird": {"synonyms": ["sparrow", "finch", "ostrich", "songbird", "fowl"],
             "attributes": ["Does the animal in the image have feathers?", "Does the animal in the image have a beak?"]},
    "cat": {"synonyms": ["kitten", "kitty", "feline", "tabby"],
            "attributes": ["Does the animal in the image have whiskers?", "Is the animal in the image a feline?"]},
    "deer": {"synonyms": ["fawn", "stag", "doe", "elk", "moose", "reindeer"],
             "attributes": ["Does the animal in the image have hooves?", "Could the animal in the image have antlers?"]},
    "dog": {"synonyms": ["puppy", "hound", "canine", "pup"],
            "attributes": ["Does the animal in the image have fur?", "Is the animal in the image a canine?"]},
    "frog": {"synonyms": ["toad", "amphibian", "tadpole", "bullfrog"],
             "attributes": ["Is the animal in the image an amphibian?", "Does the animal in the image have smooth skin?"]},
    "horse": {"synonyms": ["pony", "stallion", "mare", "foal", "equine"],
              "attributes": ["Does the animal in the image have a mane?", "Does the animal in the image have hooves?"]},
    "ship": {"synonyms": ["boat", "vessel", "liner", "freighter", "tanker", "ferry"],
             "attributes": ["Is the object in the image a watercraft?", "Is the object in the image on water?"]},
    "truck": {"synonyms": ["lorry", "pickup", "trailer", "semi"],
              "attributes": ["Is the object in the image a large vehicle?", "Does the object in the image have a cargo area?"]},
}


@dataclass
class Question:
    kind: str  # "yesno" | "describe"
    text: str
    source: str = "template"

    def to_json(self) -> dict:
        return {"type": self.kind, "text": self.text, "source": self.source}


@dataclass
class ClassQuestions:
    name: str
    synonyms: list[str] = field(default_factory=list)
    questions: list[Question] = field(default_factory=list)

    @property
    def terms(self) -> list[str]:
        """The class name and its synonyms: a description naming any of them is consistent."""
        return [_readable(self.name)] + [s for s in self.synonyms if s]


@dataclass
class QuestionSet:
    general: list[Question]
    classes: dict[str, ClassQuestions]

    def for_class(self, name: str) -> list[Question]:
        """The questions asked about a row labelled ``name``: general first, then the class's."""
        return list(self.general) + list(self.classes[name].questions)

    def check_covers(self, class_names: list[str], where: str = "") -> None:
        missing = [c for c in class_names if c not in self.classes]
        if missing:
            raise VetsetError(f"VDC question set{where} has no questions for class(es) {', '.join(missing)}; "
                              f"add them to the JSON or delete the file to rebuild it")
        empty = [c for c in class_names if not self.for_class(c)]
        if empty:
            raise VetsetError(f"VDC question set{where}: no questions at all for {', '.join(empty)}")

    def to_json(self) -> dict:
        return {
            "version": 1,
            "general": [q.to_json() for q in self.general],
            "classes": {name: {"synonyms": cq.synonyms, "questions": [q.to_json() for q in cq.questions]}
                        for name, cq in self.classes.items()},
        }

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(self.to_json(), path)


def _readable(name: str) -> str:
    """'pickup_truck' -> 'pickup truck'."""
    return re.sub(r"[_\-]+", " ", str(name)).strip()


def article(noun: str) -> str:
    return f"an {noun}" if noun[:1].lower() in "aeiou" else f"a {noun}"


def template_class(name: str) -> ClassQuestions:
    """4 yes/no questions (2 about presence, 2 attribute questions) + synonyms."""
    noun = _readable(name)
    known = KNOWN_CLASSES.get(noun.lower(), {})
    questions = [Question("yesno", f"Does the image contain {article(noun)}?"),
                 Question("yesno", f"Is there {article(noun)} in the image?")]
    attributes = known.get("attributes") or [f"Is the main object in the image {article(noun)}?",
                                             f"Is this a photo of {article(noun)}?"]
    questions += [Question("yesno", q) for q in attributes[:2]]
    return ClassQuestions(name=name, synonyms=list(known.get("synonyms", [])), questions=questions)


def template_questions(class_names: list[str], general: tuple[str, ...] = GENERAL_QUESTIONS) -> QuestionSet:
    return QuestionSet(general=[Question("describe", g) for g in general],
                       classes={c: template_class(c) for c in class_names})


def _parse_question(obj, where: str) -> Question:
    if isinstance(obj, str):
        return Question("yesno", obj, "user")
    if not isinstance(obj, dict) or "text" not in obj:
        raise VetsetError(f"{where}: a question must be a string or an object with 'text' (and 'type')")
    kind = obj.get("type", "yesno")
    if kind not in KINDS:
        raise VetsetError(f"{where}: question type {kind!r} is not one of {', '.join(KINDS)}")
    text = str(obj["text"]).strip()
    if not text:
        raise VetsetError(f"{where}: empty question text")
    return Question(kind, text, str(obj.get("source", "user")))


def load_questions(path: str | Path) -> QuestionSet:
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise VetsetError(f"{path}: no such VDC question file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VetsetError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("classes"), dict):
        raise VetsetError(f"{path}: a VDC question file needs a 'classes' object (see docs/vdc.md)")
    general = [_parse_question(q, f"{path} general") for q in raw.get("general", [])]
    classes = {}
    for name, entry in raw["classes"].items():
        if isinstance(entry, list):
            entry = {"questions": entry}
        if not isinstance(entry, dict):
            raise VetsetError(f"{path}: class {name!r} must map to an object with 'questions' and 'synonyms'")
        synonyms = entry.get("synonyms", [])
        if not isinstance(synonyms, list):
            raise VetsetError(f"{path}: synonyms of {name!r} must be a list")
        qs = [_parse_question(q, f"{path} class {name!r}") for q in entry.get("questions", [])]
        classes[str(name)] = ClassQuestions(str(name), [str(s) for s in synonyms], qs)
    return QuestionSet(general=general, classes=classes)


# ---------------------------------------------------------------- generation by a text LLM

_ATTR_PROMPT = ("Write two short yes/no questions about visual attributes that a photo of {a} would show, "
                "each answered 'yes' for {a}. One question per line.")
_SYN_PROMPT = "Give three single-word synonyms of the word '{n}', comma separated."


def llm_questions(class_names: list[str], llm, general: tuple[str, ...] = GENERAL_QUESTIONS) -> QuestionSet:
    """Ask a local text LLM (``judge.TextLLM``) for each class's attribute questions and
    synonyms; whatever it fails to give is filled in from the templates (``source`` tells)."""
    qs = template_questions(class_names, general)
    for name in class_names:
        noun = _readable(name)
        cq = qs.classes[name]
        text = llm.generate(_ATTR_PROMPT.format(a=article(noun)), max_new_tokens=64)
        found = [q.strip(" -*0123456789.)\t") for q in re.split(r"[\n]+", text)]
        found = [q for q in found if q.endswith("?") and len(q.split()) >= 3][:2]
        if found:
            cq.questions = cq.questions[:2] + [Question("yesno", q, "llm") for q in found] + cq.questions[2 + len(found):4]
        syn = llm.generate(_SYN_PROMPT.format(n=noun), max_new_tokens=24)
        words = [w.strip(" .\n\"'").lower() for w in syn.split(",")]
        words = [w for w in words if w and re.fullmatch(r"[a-z][a-z \-]{1,30}", w) and w != noun.lower()]
        cq.synonyms = list(dict.fromkeys(cq.synonyms + words[:3]))
    return qs


def resolve_questions(class_names: list[str], path: str | None, *, llm_factory=None) -> tuple[QuestionSet, str]:
    """Load the question file when it exists; otherwise build the set (LLM when
    ``llm_factory`` is given, else templates) and save it to ``path`` for review and reuse.
    Returns the set and where it came from."""
    if path and Path(path).exists():
        qs = load_questions(path)
        qs.check_covers(class_names, f" {path}")
        return qs, f"file:{path}"
    if llm_factory is not None:
        qs, origin = llm_questions(class_names, llm_factory()), "llm"
    else:
        qs, origin = template_questions(class_names), "templates"
    qs.check_covers(class_names)
    if path:
        qs.save(path)
    return qs, origin
