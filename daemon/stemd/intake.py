"""Intake: inputs become jobs. Shared by the worker and the HTTP server.

A settled inbox file is hashed (streaming) and attached to the job for its
(sha256, output profile): the `output` section's, changed by the first rule whose
glob matches its path (stemd.choices); an HTTP upload arrives hashed, with the
choices it was sent with. Content whose job is
done gets a copy of the existing stems (link, copy or skip, as configured),
content that failed before fails again at once, and anything else waits for its
job. Intake also disposes of sources once they are finished with: the inbox's
as source.after_success/after_failure say, an upload's spool file itself.

Attaching (here) and completing a job (the worker's encoder thread, on any
host) meet at the job's row in the ledger, locked by both: an input attached
before a completion is among the copies it serves, one attached after sees the
job done and is served here. Copies and source moves run after the commit,
under no lock.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from stemd.choices import ChoiceError, Choices, RuleBook, apply_choices, check_model_stems
from stemd.config import Config
from stemd.crash import crash_point
from stemd.errors import NameTaken, OutboxError, StemdError
from stemd.folders import SharedFolders
from stemd.hashing import sha256_file
from stemd.ledger import (
    ORIGIN_HTTP,
    FileStat,
    InputRecord,
    InputState,
    InputTaken,
    JobRecord,
    JobState,
    Ledger,
)
from stemd.logs import event, job_event
from stemd.manifest import MANIFEST, manifest_peaks, new_manifest, read_manifest, trusted_stems
from stemd.outbox import Outbox, TrackNames, dispose_source, stem_filename, track_folder
from stemd.profile import Profile, render_profile

if TYPE_CHECKING:  # the model's description only: intake needs no torch
    from stemd.separation.engine import ModelInfo

log = logging.getLogger("stemd")

# another host's queue is re-keyed to this one's settings only once that host was
# not heard from for this long (a restart with a long model load is not "gone")
REKEY_GONE_S = 120.0
# an input still waiting on a job that ended this long ago was left by a crash:
# the host that ends a job serves its copies right after the commit
STRANDED_AFTER_S = 600.0


def stat_of(path: Path) -> FileStat:
    return FileStat.of(os.lstat(path))


class Intake:
    def __init__(
        self,
        ledger: Ledger,
        config: Config,
        folders: SharedFolders,
        model: ModelInfo,
        node_gone: float = 60.0,
    ) -> None:
        """`node_gone`: seconds after which a daemon sharing the ledger that is
        not heard from is gone (its unhashed inputs and undisposed sources are
        taken on here)."""
        self.ledger = ledger
        self.folders = folders  # replaced by the service when a reload moves them
        self.node_gone = node_gone
        # one worker hashes at a time: the others run jobs meanwhile
        self._identifying = threading.Lock()
        self._wakers: list[Callable[[], None]] = []  # told when an upload arrives
        self._next_tidy = 0.0  # monotonic: when the queue's keys and stranded inputs are looked at
        self.configure(config, model)

    def on_arrival(self, wake: Callable[[], None]) -> None:
        """Call `wake()` whenever an upload is attached (a worker's wake-up)."""
        self._wakers.append(wake)

    def configure(self, config: Config, model: ModelInfo) -> None:
        """The settings new inputs are taken under (the worker calls this when
        it applies a reload): the model, the `output` section's profile (whose
        separation this node's workers make) and the rules that change it per
        folder."""
        self.config = config
        self.outbox = Outbox(config.outbox, config.output, self.ledger.node)
        self.model = model
        self.model_folder = model.folder
        self.rules = RuleBook(config.rules)
        self.profile = render_profile(config, model)
        self._next_tidy = 0.0  # new settings: the queue takes them at the next round
        self._rekey_all = True

    def choices_for(self, record: InputRecord) -> Choices:
        """An input's choices: an upload's own, an inbox file's rule's."""
        if record.origin == ORIGIN_HTTP:
            return record.choices
        return self.rules.rule_for(record.relative).choices()

    def profile_for(self, record: InputRecord) -> Profile | None:
        """The profile the input's job is keyed by under today's settings; None
        when its choices no longer fit them (an upload's mp3 and a new default
        rate of 96 kHz): it keeps the job it has."""
        return self._profile(record, self.choices_for(record))

    def _profile(self, record: InputRecord, choices: Choices) -> Profile | None:
        try:
            return render_profile(self.config, self.model, choices)
        except ChoiceError as err:
            log.warning("%s: its choices do not fit the settings now: %s", record.relative, err)
            return None

    def check_choices(self, choices: Choices) -> None:
        """ChoiceError (naming the key) unless a job can be rendered with these
        choices over today's settings, the model's stems included."""
        output = apply_choices(self.config.output, choices)
        check_model_stems(output, self.model.sources, self.model.name)

    # -- identify: hash and deduplicate ---------------------------------------

    def identify_pending(self, stop: Callable[[], bool], beat: Callable[[], None]) -> bool:
        """Hash and attach up to 20 settled inputs; True if there were any (or
        `stop()` or a missing folder cut the round short). False at once while
        another worker is at it."""
        if not self._identifying.acquire(blocking=False):
            return False
        try:
            self._tidy_due(beat)
            pending = self.ledger.pending_inputs(limit=20, stale_after=self.node_gone)
            for record in pending:
                if stop() or self.folders.missing():
                    return True
                beat()
                self.identify(record)
            return bool(pending)
        finally:
            self._identifying.release()

    def _tidy_due(self, beat: Callable[[], None]) -> None:
        """Now and then (after each change of settings, then every `node_gone`
        seconds): queued jobs take the profile today's settings and rules give
        them (after new settings, all of this node's; every round, those of
        another model, this node's or a gone host's, which no worker here could
        claim: stemd.ledger.rekey); and inputs a crash left waiting on a job that
        ended get what they waited for."""
        if time.monotonic() < self._next_tidy:
            return
        self._next_tidy = time.monotonic() + self.node_gone
        moved = self.ledger.rekey_queued(
            self.profile_for, self.profile, self._rekey_all, REKEY_GONE_S, beat
        )
        self._rekey_all = False  # once it went through: an outage leaves it for next time
        for record, job in moved:
            beat()
            self.settle_attached(record, job)
        for record, job in self.ledger.stranded_inputs(STRANDED_AFTER_S, self.node_gone):
            log.info("%s: served now; its copy was left undone (a restart?)", record.relative)
            beat()
            self.settle_attached(record, job)

    def identify(self, record: InputRecord) -> None:
        if not self.ledger.holds_input(record.id):
            return  # an idle host took it over while this one was busy
        try:
            now = stat_of(record.path)
        except FileNotFoundError:
            if self.folders.missing():
                return  # the whole inbox is away: the file waits with it
            self.ledger.finish_input(
                record.id, InputState.SKIPPED, None, "vanished before it was read"
            )
            event(
                logging.INFO,
                "ignored",
                f"{record.relative}: vanished before it was read",
                source=record.relative,
            )
            return
        if now != record.stat:
            # Written again since it settled: the watcher registers the new version.
            self.ledger.finish_input(
                record.id, InputState.SKIPPED, None, "changed after it settled"
            )
            return
        limit = self.config.watch.max_file_size
        if record.stat.size > limit:
            self.refuse(record, f"{record.stat.size} bytes is over watch.max_file_size ({limit})")
            return
        if record.stat.size == 0:
            self.refuse(record, "the file is empty")
            return
        try:
            digest = sha256_file(record.path)
            after = stat_of(record.path)
        except OSError as err:
            self.refuse(record, f"cannot read it: {err.strerror or err}")
            return
        if after != record.stat:
            self.ledger.finish_input(record.id, InputState.SKIPPED, None, "changed while hashed")
            log.info("%s changed while it was hashed; waiting for it to settle", record.relative)
            return
        try:
            self.attach(record, digest)
        except InputTaken:  # taken over while it was hashed here
            log.debug("%s: hashed by another host meanwhile", record.relative)

    def attach(self, record: InputRecord, digest: str) -> None:
        # an inbox file's rule, looked up once: its choices and its callback
        rule = None if record.origin == ORIGIN_HTTP else self.rules.rule_for(record.relative)
        profile = self._profile(record, rule.choices() if rule else record.choices)
        if profile is None:
            self.refuse(record, "its choices do not fit the output settings (see the log)")
            return
        if rule is not None and rule.callback_url is not None:
            # before the attach: a job that ended already is posted at once
            self.ledger.set_callback_url(record.id, rule.callback_url)
        job = self.ledger.attach(record.id, digest, profile, record.relative)
        crash_point("hashed")
        job_event(
            logging.INFO,
            "detected",
            f"{record.relative}: new input, sha256 {digest[:12]}",
            job,
            record.relative,
        )
        self.settle_attached(record, job)

    def settle_attached(self, record: InputRecord, job: JobRecord) -> None:
        """An input just attached to `job`: a copy of its stems if it is done,
        its failure repeated if it failed, else it waits for the job."""
        if job.state is JobState.DONE:
            self.reuse(record.id, job)
        elif job.state is JobState.FAILED:
            reason = f"identical content failed before: {job.error}"
            self.ledger.fail_input(record.id, reason)
            job_event(
                logging.ERROR,
                "failed",
                f"{record.relative}: {reason}",
                job,
                record.relative,
            )
            self.dispose(record, success=False)
        elif job.owner_input != record.id:
            log.info("%s: same content as %s; waiting for that job", record.relative, job.source)

    def refuse(self, record: InputRecord, reason: str) -> None:
        self.ledger.fail_input(record.id, reason)
        event(logging.ERROR, "failed", f"{record.relative}: {reason}", source=record.relative)
        self.dispose(record, success=False)

    def take_upload(
        self,
        path: Path,
        relative: str,
        digest: str,
        choices: Choices | None = None,
        callback_url: str | None = None,
    ) -> int:
        """An upload the HTTP server spooled and hashed, with the choices it was
        sent with (checked: `check_choices`): registered and attached as a hashed
        inbox file is (dedup, copies of finished stems included). Called from the
        server's threads; returns the new input's id. `callback_url`, already
        checked (stemd.callbacks.check_callback_url), is stored with the input
        before it is attached: a job that ended already is posted at once."""
        record = self.ledger.add_input(
            path,
            relative,
            stat_of(path),
            origin=ORIGIN_HTTP,
            choices=choices,
            callback_url=callback_url,
        )
        if record is None:  # a new spool file is a new (path, inode): never known
            raise StemdError(f"{path}: this upload is already in the ledger")
        self.attach(record, digest)
        for wake in self._wakers:
            wake()
        return record.id

    def reuse(self, input_id: int, job: JobRecord) -> None:
        """Give an input the stems of an identical, already separated track."""
        record = self.ledger.get_input(input_id)
        if record.state is not InputState.ATTACHED:
            return  # served meanwhile (by the job's completion, or a sweep)
        if not job.output_dir:
            self.ledger.finish_input(
                input_id,
                InputState.SKIPPED,
                None,
                "identical track was not written (on_conflict: skip)",
            )
            self.dispose(record, success=True)
            return
        original = self.outbox.root / job.output_dir
        manifest = read_manifest(original)
        mode = self.config.output.duplicates
        if mode == "skip":
            self.ledger.finish_input(
                input_id,
                InputState.SKIPPED,
                job.output_dir,
                f"same content as {job.output_dir} (duplicates: skip)",
            )
            job_event(
                logging.INFO,
                "duplicate",
                f"{record.relative}: same as {job.output_dir}; "
                "not written (output.duplicates: skip)",
                job,
                record.relative,
            )
            self.dispose(record, success=True)
            return
        trusted = trusted_stems(original, self.outbox.root, manifest)
        if manifest is None or trusted is None:
            # gone, or a manifest naming files outside its folder, links, ...: copy
            # nothing it names (stemd.manifest); separate the content again instead
            log.warning(
                "%s: the stems of the identical track in %s are gone or their %s is not "
                "stemd's (names outside the folder, links); separating it again",
                record.relative,
                job.output_dir,
                MANIFEST,
            )
            if self.ledger.rerender(job, record):
                for wake in self._wakers:
                    wake()
                return
            now = self.ledger.get_job(job.id)
            if now.state is JobState.DONE and now.output_dir != job.output_dir:
                self.reuse(input_id, now)  # rendered again meanwhile: its new stems
            return  # queued or running again: this input is served when it ends
        names = TrackNames.for_input(self.model_folder, record.relative, job.sha256)
        folder = track_folder(self.config.output.layout, names)
        stems = {stem: path.name for stem, path in trusted.items()}
        files = {
            stem: stem_filename(self.config.output.layout, names, stem, name.rsplit(".", 1)[-1])
            for stem, name in stems.items()
        }
        temp = self.outbox.new_temp(f"dup{input_id}")
        try:
            renamed = {name: files[stem] for stem, name in stems.items()}
            self.outbox.copy_stems(original, temp, renamed, link=mode == "link")
            copy = dict(manifest)
            if not self._copy_peaks(original, temp, mode == "link"):
                copy.pop("peaks", None)
            copy.update(
                source=record.relative,
                stems=files,
                duplicate_of=job.output_dir,
                separation_seconds=0.0,
                model_seconds=0.0,
            )
            copy.pop("created", None)
            self.outbox.seal(temp, new_manifest(**copy))
            target = self.outbox.publish(temp, folder, job.sha256, job.profile)
        except NameTaken as err:  # the name appeared meanwhile: try again later
            self.outbox.discard(temp)
            log.warning(
                "%s: cannot reuse stems of %s yet: %s", record.relative, job.output_dir, err
            )
            return  # still waiting: the stranded-input sweep serves it (_tidy_due)
        except (OSError, OutboxError) as err:
            self.outbox.discard(temp)
            self.ledger.finish_input(
                input_id, InputState.FAILED, None, f"cannot reuse stems of {job.output_dir}: {err}"
            )
            log.error("%s: cannot reuse stems of %s: %s", record.relative, job.output_dir, err)
            return
        # the same name dropped again resolves to job.output_dir itself: nothing new written
        where = target.as_posix() if target else None
        self.ledger.finish_input(input_id, InputState.DUPLICATE, where)
        job_event(
            logging.INFO,
            "duplicate",
            f"{record.relative}: same content as {job.source}; stems reused in {where}",
            job,
            record.relative,
        )
        self.dispose(record, success=True)

    def _copy_peaks(self, original: Path, temp: Path, link: bool) -> bool:
        """The waveforms go with the stems when the original's are stemd's own; a
        copy without them is still a copy (the page draws none)."""
        peaks = manifest_peaks(original, self.outbox.root)
        if peaks is None:
            return False
        try:
            self.outbox.copy_stems(original, temp, {peaks.name: peaks.name}, link=link)
        except (OSError, OutboxError) as err:
            log.warning("%s: its %s is not copied: %s", original, peaks.name, err)
            return False
        return True

    def dispose(self, record: InputRecord, success: bool) -> None:
        if record.origin == ORIGIN_HTTP:
            # Our own spool file: gone once its stems exist, kept after a failure
            # so a retry has its source. Another node's is in its state_dir: it
            # removes it (Spool.tidy) once the ledger says it is done.
            if success and record.node in (None, self.ledger.node):
                try:
                    record.path.unlink(missing_ok=True)
                except OSError as err:
                    log.error(
                        "%s: cannot remove the upload %s: %s", record.relative, record.path, err
                    )
                    return
            self.ledger.mark_disposed(record.id)
            return
        src = self.config.source
        action = src.after_success if success else src.after_failure
        folder = src.archive_dir if success else src.failed_dir
        if self.folders.missing():
            return  # left undisposed; done when the folders are back
        try:
            done = dispose_source(record.path, record.relative, record.stat, action, folder)
        except OSError as err:
            log.error("%s: cannot %s the source: %s", record.relative, action, err)
            return
        self.ledger.mark_disposed(record.id)
        if done != "kept":
            log.info("%s: source %s", record.relative, done)

    def dispose_leftovers(self) -> None:
        """Finish dispositions a crash interrupted (committed, not yet moved/deleted)."""
        for record in self.ledger.undisposed_inputs(stale_after=self.node_gone):
            self.dispose(record, success=record.state is not InputState.FAILED)
