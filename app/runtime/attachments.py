"""Files handed to a worker: what they are, the policy limiting them, how they reach the model."""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass
from pathlib import PurePosixPath

from pydantic_ai.messages import BinaryContent

from .definitions import AttachmentPolicy
from .errors import AttachmentRejected


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    data: bytes
    media_type: str

    @classmethod
    def of(cls, filename: str, data: bytes, media_type: str | None = None) -> Attachment:
        return cls(filename, data, media_type or guess_media_type(filename))

    def to_content(self) -> BinaryContent:
        return BinaryContent(self.data, media_type=self.media_type, identifier=self.filename)

    def describe(self) -> dict[str, object]:
        return {"filename": self.filename, "media_type": self.media_type, "bytes": len(self.data)}


def guess_media_type(filename: str) -> str:
    guessed, _ = mimetypes.guess_type(filename, strict=False)
    if guessed is None and PurePosixPath(filename).suffix.lower() == ".md":
        return "text/markdown"
    return guessed or "application/octet-stream"


def check_policy(policy: AttachmentPolicy, files: list[Attachment], *, worker: str) -> None:
    """Raise AttachmentRejected naming the first rule of `worker`'s policy that `files` break."""
    if not files:
        return
    if len(files) > policy.max_attachments:
        raise AttachmentRejected(
            f"Too many attachments for worker {worker!r}: {len(files)} > {policy.max_attachments}"
        )
    allowed = {s.lower() for s in policy.allowed_suffixes}
    denied = {s.lower() for s in policy.denied_suffixes}
    for f in files:
        suffix = PurePosixPath(f.filename).suffix.lower()
        if suffix in denied or (allowed and suffix not in allowed):
            shown = (
                ", ".join(sorted(allowed)) if allowed else "any but " + ", ".join(sorted(denied))
            )
            raise AttachmentRejected(
                f"Attachment suffix {suffix or '(none)'!r} of {f.filename!r} not allowed "
                f"by worker {worker!r} (allowed: {shown})"
            )
    total = sum(len(f.data) for f in files)
    if total > policy.max_total_bytes:
        raise AttachmentRejected(
            f"Attachments exceed max_total_bytes of worker {worker!r}: "
            f"{total} > {policy.max_total_bytes}"
        )
