"""Keeping a turn's audio when ``[recording] enabled`` (FLAC encoding and file I/O: a worker)."""

from __future__ import annotations

import trio

from .context import SessionContext
from .controller import StartTurn
from .turn import TurnResult


async def save_recording(ctx: SessionContext, start: StartTurn, result: TurnResult) -> None:
    """Save the user's utterance and the reply of one turn; a disk error is logged, not raised.

    Shielded: a turn cut short by the device going away is still worth keeping.
    """
    recorder = ctx.services.recorder
    if recorder is None:
        return
    with trio.CancelScope(shield=True):
        try:
            await ctx.services.workers.run(
                recorder.save,
                ctx.device_id,
                ctx.session_id,
                start.number,
                start.utterance,
                result.reply_audio,
                start.user_text or "",
                result.reply_text,
            )
        except OSError as e:
            ctx.log.warning("could not save the recording of turn %d: %s", start.number, e)
