"""Follow an audit log across the apiserver's rotations, never reading a line twice or half.

kube-apiserver rotates its audit log with lumberjack: the live file is renamed to
``<stem>-<UTC time>.<ext>`` (``audit-2026-11-27T18-10-45.450.log``), a new file is created at
the path, and older backups may later be gzipped (``.log.gz``, the plain one then removed).
logrotate's ``copytruncate`` instead copies the file and truncates it in place. This module
follows both:

- a file is known by device + inode **and** a fingerprint of its first bytes (inodes are reused;
  a copied or gzipped backup has a new inode but the same first bytes);
- after a rename the old file is read to its end before the new one is opened, and any backup
  rotated in between (several rotations while we were slow or down) is read in order;
- a truncated live file is finished from its copy (found by fingerprint), then read from 0;
- a copy made before we had read enough of the live file to know it by its first bytes (a
  copytruncate right after a rotation, or while we were down) is found as a backup newer than
  our opening of the live file, and read before the live file goes on, and before any line
  read from it is returned (so its lines come before those written after the truncation);
- a rotation noticed late may be the last of several: a live file known only by inode (fewer
  than ``FP_MIN_TRUST`` bytes read) that was renamed, or found renamed after a restart, may
  have been copy-truncated first, so everything rotated since we opened it is read in order
  (its copies, the file itself, later backups; renamed out of sight, what is open is read);
  one known by its first bytes is checked for a truncation (finished from its copy) before
  its rename is followed;
- "since we opened it" is by backup key: a live file is opened after listing its backups, and
  a backup keyed after the newest listed is newer (wall-clock times would miss a backup named,
  in milliseconds, or stamped, by the coarse file clock, just before our opening);
- only complete lines are returned; a partial last line waits for its newline, except at the
  end of a file that was rotated away (no more writes will come), where it counts as a line;
- a line longer than ``MAX_LINE_BYTES`` is read on through :class:`~webhook.inputs.longline.LongLine`
  down to its audit fields (memory stays bounded); one that cannot be is skipped and counted.

:class:`Follower` never raises for a vanished or unreadable backup: it logs, counts and moves on.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from webhook.inputs.files import READ_ERRORS
from webhook.logs import fields
from webhook.tail.logfiles import (
    FP_MIN_TRUST,
    Batch,
    Candidate,
    LogFile,
    Position,
    fingerprint,
    rotated_candidates,
    same_file,
    starts_like,
)

__all__ = ["FollowStats", "Follower"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class FollowStats:
    rotations: int = 0
    truncations: int = 0
    unreadable: int = 0
    lost: int = 0
    """Files (or parts of files) known to be gone before they were read."""


class Follower:
    """Yields batches of complete lines from ``path`` and its rotations, in write order.

    Create it with the checkpointed :class:`Position` (or None for a first start), call
    :meth:`read` in a loop (an empty batch with nothing consumed means: at the end, wait) and
    checkpoint :meth:`position` after the lines returned so far are handled.
    """

    def __init__(self, path: str, resume: Position | None = None, *, from_start: bool = False) -> None:
        self.path = os.path.abspath(path)
        self.stats = FollowStats()
        self._current: LogFile | None = None
        self._queue: list[Candidate] = []
        self._done: list[Position] = []
        self._gap: Position | None = None
        self._back_to_live: Position | None = None
        """Where to go on in the live file after reading copies of it first."""
        self.idle = False
        """True after a read found nothing new at the end of the live file."""
        if resume is not None and resume.dev == 0:
            self._queue = [c for c in rotated_candidates(self.path) if resume.key and c.key > resume.key]
            self._open_next()
        elif resume is not None:
            self._resume(resume)
        elif from_start:
            self._queue = rotated_candidates(self.path)
            self._open_next()
        else:
            self._open_live(at_end=True)

    # -- start-up -------------------------------------------------------------------------
    def _resume(self, pos: Position) -> None:
        live = not pos.closed and same_file(self.path, pos, need_inode=True)
        if live and self._open_live(offset=pos.offset, skipping=pos.skipping, opened_at=pos.opened_at):
            return
        if not pos.closed and pos.fp_len < FP_MIN_TRUST:
            # Known by its inode only, and no longer live: renamed, maybe copy-truncated before
            # that (its copies are not found by inode). Read all rotated since we opened it.
            logger.info(
                "the checkpointed file was rotated since; reading its backups", **fields(path=pos.path)
            )
            self._queue = self._unread_since(pos.opened_at)
            self._open_next()
            return
        found = next((c for c in rotated_candidates(self.path) if same_file(c.path, pos)), None)
        if found is not None:
            logger.info(
                "checkpointed file rotated since the checkpoint; resuming in its backup",
                **fields(path=found.path, offset=pos.offset),
            )
            self._open(found, offset=pos.offset, skipping=pos.skipping)
            return
        if pos.offset > 0 and not pos.finished:
            self.stats.lost += 1
            logger.error(
                "the checkpointed file is gone: what followed its offset is lost; "
                "reading the backups rotated after it",
                **fields(path=pos.path, inode=pos.ino, offset=pos.offset),
            )
        after = pos.key if pos.key is not None else pos.opened_at
        self._queue = self._unread_since(after)
        self._open_next()

    # -- opening --------------------------------------------------------------------------
    def _open(self, cand: Candidate, *, offset: int = 0, skipping: bool = False) -> bool:
        try:
            source = LogFile(cand.path, closed=True, key=cand.key, opened_at=time.time())
            try:
                source.seek(offset, skipping)
            except BaseException:
                source.close()
                raise
        except READ_ERRORS as exc:
            self.stats.unreadable += 1
            logger.error(
                "cannot read a rotated audit log; skipped", **fields(path=cand.path, error=str(exc)[:300])
            )
            return False
        self._switch(source)
        return True

    def _open_live(
        self, *, at_end: bool = False, offset: int = 0, skipping: bool = False, opened_at: float | None = None
    ) -> bool:
        if opened_at is None:
            # Backups keyed after the newest one present now were rotated after this opening.
            opened_at = max((c.key for c in rotated_candidates(self.path)), default=0.0)
        try:
            source = LogFile(self.path, closed=False, key=None, opened_at=opened_at)
        except FileNotFoundError:
            self._switch(None)
            return False
        except OSError as exc:
            logger.error(
                "cannot open the audit log; trying again at the next poll",
                **fields(path=self.path, error=str(exc)[:300]),
            )
            self._switch(None)
            return False
        if at_end:
            offset = source.last_line_end()
        source.seek(offset, skipping)
        self._switch(source)
        return True

    def _switch(self, source: LogFile | None) -> None:
        previous = self._current
        if previous is not None:
            previous.close()
            logger.debug(
                "left a file", **fields(path=previous.path, offset=previous.offset, closed=previous.closed)
            )
        self._current = source
        if source is not None:
            logger.debug(
                "reading a file", **fields(path=source.path, offset=source.offset, closed=source.closed)
            )
            self._gap = None
        else:
            # Nothing open: remember where we stood so a checkpoint can resume after it.
            if previous is not None and previous.closed:
                self._gap = previous.position()
                self._gap.finished = True
                if self._gap.key is None:
                    self._gap.key = previous.opened_at
            elif self._gap is None:
                now = time.time()
                self._gap = Position(
                    self.path, 0, 0, "", 0, 0, closed=True, key=now, opened_at=now, finished=True
                )

    def _open_next(self) -> None:
        while self._queue:
            if self._open(self._queue.pop(0)):
                return
        back, self._back_to_live = self._back_to_live, None
        if back is not None:
            if same_file(self.path, back, need_inode=True):
                self._open_live(offset=back.offset, skipping=back.skipping, opened_at=back.opened_at)
                return
            moved = next((c for c in rotated_candidates(self.path) if same_file(c.path, back)), None)
            if (
                moved is not None
                and not self._was_read(moved.path)
                and self._open(moved, offset=back.offset, skipping=back.skipping)
            ):
                return
        self._open_live()

    # -- reading --------------------------------------------------------------------------
    def read(self) -> Batch:
        """The next lines; an empty batch with ``consumed == 0`` means nothing new yet.

        :attr:`idle` tells whether that is because the live file is read to its end.
        """
        self.idle = False
        for _ in range(64):
            source = self._current
            if source is None:
                if not self._open_live():
                    self.idle = True
                    return Batch()
                source = self._current
                assert source is not None
            before = source.save()
            try:
                batch = source.read()
            except READ_ERRORS as exc:
                self.stats.unreadable += 1
                logger.error(
                    "reading a file failed; rest of the file skipped",
                    **fields(path=source.path, error=str(exc)[:300]),
                )
                self._after_closed(source)
                continue
            if (batch.lines or batch.consumed) and not source.closed and not source.head_intact():
                source.restore(before)  # truncated under us: what we just read may be new content
                self._truncated(source)
                continue
            if batch.lines and not source.closed and before[0] < FP_MIN_TRUST:
                # The first lines of a live file we knew too little of: a copy made since we
                # opened it, of other lines, holds older lines, which come first.
                unseen = self._unseen_copies(source)
                if unseen and self._rereadable(source):
                    source.restore(before)
                    self._read_copies_first(source, unseen)
                    continue
            if batch.lines or batch.consumed:
                return batch
            if source.closed:
                self._after_closed(source)
                continue
            if not self._check_live(source):
                self.idle = True
                return Batch()
        return Batch()

    def _after_closed(self, source: LogFile) -> None:
        """A rotated file is finished: read what was rotated after it, then the live file."""
        self._done.append(source.position())
        self._done = self._done[-64:]
        if not self._queue:
            after = source.key
            if after is None:
                own = next((c for c in rotated_candidates(self.path) if self._is(c.path, source)), None)
                after = own.key if own is not None else source.opened_at
            self._queue = [c for c in self._unread_since(after) if not self._is(c.path, source)]
        self._open_next()

    def _is(self, path: str, source: LogFile) -> bool:
        return same_file(path, source.position())

    def _was_read(self, path: str) -> bool:
        return any(same_file(path, done) for done in self._done)

    def _unread_since(self, key: float) -> list[Candidate]:
        """Backups rotated after ``key`` (a backup key, or when a live file was opened) not read
        to their end yet, in rotation order."""
        return [c for c in rotated_candidates(self.path) if c.key > key and not self._was_read(c.path)]

    def _check_live(self, source: LogFile) -> bool:
        """At the end of the live file: has it been rotated? True when there is more to read."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False  # renamed, the new file not created yet: wait
        except OSError as exc:
            logger.warning(
                "cannot stat the audit log; trying again at the next poll",
                **fields(path=self.path, error=str(exc)[:300]),
            )
            return False
        if source.size() < source.read_so_far or not source.head_intact():
            self._truncated(source)  # and maybe renamed since: the copy first, then what followed
            return True
        if (st.st_dev, st.st_ino) != (source.dev, source.ino):
            self.stats.rotations += 1
            logger.info(
                "audit log rotated; finishing the old file before switching", **fields(path=self.path)
            )
            if len(source.head()) < FP_MIN_TRUST and self._rereadable(source):
                # Known by its inode only: it may have been copy-truncated before the rename.
                self._reread_since_opened(source)
                return True
            source.closed = True
            return True
        unseen = self._unseen_copies(source)
        if not unseen:
            return False
        self._read_copies_first(source, unseen)
        return True

    def _unseen_copies(self, source: LogFile) -> list[Candidate]:
        """Backups made since we opened the live file that do not hold what we read of it.

        Not the file itself (renamed), not one that begins with the bytes we read: with the
        file's first bytes unchanged, such a backup is a copytruncate we could not notice, made
        before we had read enough to know the content by its first bytes.
        """
        pos = source.position()
        return [
            c
            for c in rotated_candidates(self.path)
            if c.key > source.opened_at
            and not self._was_read(c.path)
            and not _same_inode(c.path, source)
            and not (pos.fp_len >= FP_MIN_TRUST and starts_like(c.path, pos))
        ]

    def _rereadable(self, source: LogFile) -> bool:
        """Do the backups and the live file, read from their beginnings, hold all of the file we
        have open? Yes when it is still the live file, or empty, or a backup now (by inode; by
        its first bytes when gzipped since); not when it was renamed out of sight."""
        head = source.first_bytes()
        if not head or _same_inode(self.path, source):
            return True
        probe = Position(source.path, source.dev, source.ino, fingerprint(head), len(head), 0)
        return any(
            _same_inode(c.path, source) or (len(head) >= FP_MIN_TRUST and starts_like(c.path, probe))
            for c in rotated_candidates(self.path)
        )

    def _reread_since_opened(self, source: LogFile) -> None:
        """A live file known by too few bytes changed: read, in order and from their beginning,
        all backups rotated since we opened it (its copies; itself, if renamed; later ones),
        then the live file from its beginning. What we had read of it (no whole line, or fewer
        than ``FP_MIN_TRUST`` bytes of lines) may be read twice."""
        self._switch(None)
        self._queue = self._unread_since(source.opened_at)
        self._open_next()

    def _read_copies_first(self, source: LogFile, copies: list[Candidate]) -> None:
        self.stats.truncations += 1
        self.stats.rotations += 1
        logger.warning(
            "audit log copied and truncated before we could tell; reading the copy, then going on",
            **fields(path=self.path, copy=copies[0].path),
        )
        if len(source.head()) < FP_MIN_TRUST:
            self._reread_since_opened(source)
            return
        back = source.position()
        back.opened_at = max(back.opened_at, copies[-1].key)
        self._switch(None)
        self._queue = list(copies)
        self._back_to_live = back
        self._open_next()

    def _truncated(self, source: LogFile) -> None:
        """copytruncate: finish the old content from its copy (found by fingerprint), then read from 0."""
        pos = source.position()
        self.stats.truncations += 1
        self.stats.rotations += 1
        # A copy has a new inode, so a short fingerprint (every audit line starts alike) cannot
        # find it; then the copy is the oldest unread backup made since we opened the file.
        weak = pos.fp_len < FP_MIN_TRUST
        if weak:
            candidates = [
                c
                for c in rotated_candidates(self.path)
                if c.key > source.opened_at and not _same_inode(c.path, source)
            ]
        else:
            candidates = [c for c in reversed(rotated_candidates(self.path)) if same_file(c.path, pos)]
        copy = next((c for c in candidates if not self._was_read(c.path)), None)
        if copy is None:
            self.stats.lost += 1
            logger.error(
                "audit log truncated and no copy of it found: lines after the offset may be lost",
                **fields(path=self.path, offset=source.offset),
            )
        else:
            logger.info(
                "audit log copied and truncated; finishing the copy", **fields(path=self.path, copy=copy.path)
            )
        if weak or copy is None:
            # From the beginning: all rotated since we opened it (it too, if renamed since).
            self._reread_since_opened(source)
            return
        self._switch(None)
        self._queue = []
        if not self._open(copy, offset=pos.offset, skipping=pos.skipping):
            self._queue = self._unread_since(copy.key)
            self._open_next()

    def position(self) -> Position:
        """Where the lines returned so far end (when no file is open: what to resume after)."""
        if self._current is not None:
            return self._current.position()
        if self._gap is None:
            now = time.time()
            self._gap = Position(
                self.path, 0, 0, "", 0, 0, closed=True, key=now, opened_at=now, finished=True
            )
        return self._gap

    def pending_bytes(self) -> int:
        """Bytes written but not yet returned, in the current file (for the lag metric)."""
        source = self._current
        if source is None or source.compressed:
            return 0
        try:
            return max(0, source.size() - source.offset)
        except OSError:
            return 0

    def close(self) -> None:
        self._switch(None)


def _same_inode(path: str, source: LogFile) -> bool:
    """Is ``path`` the file ``source`` has open (renamed), not a copy of it?"""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (source.dev, source.ino)
