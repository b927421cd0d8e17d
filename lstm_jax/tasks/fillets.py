"""The voice-acted dialogs of the game Fish Fillets NG (Debian ``fillets-ng-data`` with
``fillets-ng-data-cs`` / ``-nl``; GPL-2) as a speech corpus.

Layout under ``/usr/share/games/fillets-ng``: the audio of dialog ``<id>`` of level
``<level>`` is ``sound/<level>/<lang>/<id>.ogg``; its transcript is the ``dialogStr("...")``
after ``dialogId("<id>", font, "English text")`` in ``script/<level>/dialogs_<lang>.lua``.
Ids read ``[<level prefix>-]<speaker>-<name>`` (``m`` the small fish, ``v`` the big one,
other characters by their own codes), so the speaker is the next-to-last ``-`` field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

from lstm_jax.datasets import DatasetError

__all__ = ["FILLETS_ROOT", "LANGUAGES", "Clip", "parse_dialogs", "load_fillets"]

FILLETS_ROOT = Path("/usr/share/games/fillets-ng")
LANGUAGES = ("cs", "nl")

_CALL = re.compile(r'dialog(Id|Str)\(\s*"((?:[^"\\]|\\.)*)"', re.S)
_ESCAPES = {"n": " ", "t": " ", '"': '"', "'": "'", "\\": "\\"}


class Clip(NamedTuple):
    """One recorded utterance."""

    audio: str  # path of the audio file
    text: str  # transcript as written (normalise it before training)
    speaker: str
    group: str  # the unit of the train/dev/test split (a game level; a manifest's split or file)


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), s)


def parse_dialogs(source: str) -> dict[str, str]:
    """``{dialog id: translated text}`` from the text of a ``dialogs_<lang>.lua`` file.

    Each ``dialogStr("...")`` belongs to the ``dialogId("<id>", ...)`` before it; Lua string
    escapes are undone; a later definition of the same id wins.
    """
    out: dict[str, str] = {}
    current = None
    for kind, value in _CALL.findall(source):
        if kind == "Id":
            current = value
        elif current is not None:
            out[current] = _unescape(value)
            current = None
    return out


def _speaker(dialog_id: str) -> str:
    parts = dialog_id.split("-")
    return parts[-2] if len(parts) >= 2 else "unknown"


def _texts(folder: Path, language: str) -> dict[str, str]:
    texts: dict[str, str] = {}
    for script in sorted(folder.glob(f"*dialogs_{language}.lua")):
        texts.update(parse_dialogs(script.read_text(encoding="utf-8", errors="replace")))
    return texts


def load_fillets(language: str = "cs", root=FILLETS_ROOT) -> list[Clip]:
    """Every dialog of ``language`` that has both a recording and a transcript, level by level.

    Transcripts come from every ``*dialogs_<lang>.lua`` of the level's script folder (levels
    also keep some in e.g. ``demo_dialogs_<lang>.lua``), then from any level's (ids shared
    across levels, ``sound/share/*``). The split group is the level (``share/<folder>``).
    """
    if language not in LANGUAGES:
        raise DatasetError(f"expected --language in {LANGUAGES}, got {language!r}")
    root = Path(root)
    if not (root / "sound").is_dir():
        raise DatasetError(
            f"expected the Fish Fillets NG data under {root}, got no such folder: apt-get install -y "
            f"--no-install-recommends fillets-ng-data fillets-ng-data-{language} (or pass --manifest)"
        )
    everywhere: dict[str, str] = {}
    for folder in sorted(p for p in (root / "script").rglob("*") if p.is_dir()):
        everywhere.update(_texts(folder, language))
    clips = []
    for audio_dir in sorted((root / "sound").glob(f"**/{language}")):
        level = audio_dir.parent.relative_to(root / "sound")
        local = _texts(root / "script" / level, language)
        if level.parts[0] == "share":
            local = {**_texts(root / "script" / "share", language), **local}
        for audio in sorted(audio_dir.glob("*.ogg")):
            text = local.get(audio.stem, everywhere.get(audio.stem, "")).strip()
            if text:
                clips.append(Clip(str(audio), text, _speaker(audio.stem), level.as_posix()))
    if not clips:
        raise DatasetError(f"expected recorded dialogs for language {language!r} under {root}, got none")
    return clips
