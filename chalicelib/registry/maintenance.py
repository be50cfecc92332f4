"""Upload purging and garbage collection over the storage layout.

Both walk repositories by listing, so they work on every driver and on trees
written by registry:2. Garbage collection runs online: see the protocol below. It
runs in small steps checkpointed in storage, so a scheduled function (Lambda,
Azure timer) does one run over as many invocations as it needs: see "checkpointing"
below for why that is as safe as one run. Retention policies are planned with it,
and leave immutable tags (storage.tag.immutable) alone.
"""
from __future__ import annotations

import fnmatch
import functools
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterable, Optional, Sequence

from ..cache.base import BlobDescriptorService
from ..config import ImmutableTagRule, RetentionPolicy, StorageConfig
from ..context import Context
from ..digest import Digest, DigestError
from ..storage import PathNotFoundError, StorageDriver, StorageError, paths
from . import catalog
from .blobs import GC_DIR, GC_STATE, QUARANTINE, blob_path, gc_state, is_sweeping, quarantine_path
from .referrers import ReferrersIndex
from .tags import immutable_rule

log = logging.getLogger("stratus.maintenance")


def _parse_started_at(text: str) -> Optional[datetime]:
    try:
        return datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None


def purge_uploads(
    ctx: Context, driver: StorageDriver, older_than: timedelta, dry_run: bool = False,
    now: Optional[datetime] = None,
) -> list[str]:
    """Remove uploads started before now - older_than; returns the upload dirs removed.

    An upload whose startedat is missing or unreadable is purged too: registry:2
    does the same, since nothing can ever complete it safely.
    """
    cutoff = (now or datetime.now(timezone.utc)) - older_than
    removed = []
    # repositories with uploads may have no manifests yet
    for name in catalog.repositories(ctx, driver, marker="_uploads"):
        try:
            uploads = driver.list(ctx, paths.uploads(name))
        except StorageError:
            continue
        for upload_dir in uploads:
            upload_id = upload_dir.rsplit("/", 1)[1]
            try:
                started = _parse_started_at(driver.get_content(ctx, paths.upload_started_at(name, upload_id)).decode())
            except (StorageError, UnicodeDecodeError):
                started = None
            if started is not None and started.tzinfo is None:
                started = started.replace(tzinfo=timezone.utc)
            if started is not None and started >= cutoff:
                continue
            removed.append(upload_dir)
            if not dry_run:
                try:
                    driver.delete(ctx, upload_dir)
                except PathNotFoundError:
                    pass
    if removed:
        log.info("purged %d upload(s)%s", len(removed), " (dry run)" if dry_run else "")
    return removed


# -- garbage collection ----------------------------------------------------------------
#
# Mark: every repository's revisions are read, and every digest they name by any
# field is marked (lenient: `references`). Any error while marking stops the run
# before anything is deleted: a manifest not read is a manifest whose blobs would
# be swept (the reference stops with "failed to mark" too).
#
# Plan: every blob not marked, older than the grace period, and linked into no
# repository within the grace period, is a candidate. The plan is logged, and a dry
# run ends here.
#
# Sweep, online: pushes and pulls go on meanwhile. Safety rests on a handshake in
# storage between the collector and each manifest PUT, where each side writes
# before it reads what the other writes (blobs.GC_STATE, a file rewritten, never
# removed: "sweeping <n>" during the n-th sweep, "idle <n>" after it):
#
#   collector: write "sweeping n"; move each candidate's data aside (quarantine/);
#              list every repository again, marking the manifests and the young
#              layer links it had not seen; put back what is now marked, delete the
#              rest; write "idle n".
#   PUT:       read the state; check its references (shared cache or storage);
#              write the body, the revision link, the tag; read the state again. If
#              it changed or says "sweeping", check every reference in storage
#              (never a cache), taking back from quarantine/ what the sweep moved
#              aside; one gone is a refusal (MANIFEST_BLOB_UNKNOWN), undoing the
#              revision link and the tag this PUT wrote.
#
# Why nothing accepted is lost: if the PUT's second read comes before "sweeping n"
# was written, its revision link was written before the collector's second
# listing, which sees it and keeps (puts back) everything it names. Otherwise the
# PUT saw the sweep, and checked in storage after writing: data present then was
# either never moved, or moved after the link was written (and the second listing
# sees the link), or taken back by the PUT (and the collector's delete of the
# quarantined copy finds nothing, so it counts it rescued). A PUT whose first read
# came after the sweep ended checked its references after the data was gone. The
# case that remains: a reference accepted through a Redis entry written back from
# a stat that read storage before the move and reached Redis after the collector's
# last clear of that digest; the entry's TTL bounds it.
#
# Success, not only safety, is kept likely too: blob commits and mounts check
# their data the same way after writing their link while a sweep runs (taking it
# back from quarantine), and the grace period keeps what was uploaded recently out
# of the candidates: a blob's data and its layer links both carry the time of the
# commit (a filesystem rename keeps the time of the last chunk, which is why the
# layer link's time counts too). A PUT of a blob HEAD-skipped by the client (it
# existed, unreferenced and older than the grace period) may be refused if the
# sweep deletes it meanwhile; the client pushes it again.
#
# Caches: each swept digest is cleared from the shared (Redis) descriptor cache
# before its data moves, again just after, and once more when it is deleted; a
# sweep keeps a blob whose clear fails. In-process caches never answer existence
# (cache.base), so there is nothing in them to clear.

DEFAULT_GRACE = 3600.0  # storage.maintenance.gc.graceperiod


class GCError(Exception):
    """Garbage collection stopped; nothing it could not prove unused was deleted.

    `phase` is "mark" when it stopped before changing anything, "sweep" when it
    stopped after deleting some of what it planned (and put back every blob it had
    moved aside).
    """

    phase = "mark"


@dataclass
class GCReport:
    dry_run: bool = False
    repositories: int = 0
    manifests_marked: int = 0
    marked: set = field(default_factory=set)
    deleted: list = field(default_factory=list)  # blob digests swept (or planned, on a dry run)
    manifests_deleted: list = field(default_factory=list)  # "<name>@<digest>"
    tags_deleted: list = field(default_factory=list)  # "<name>:<tag>", expired by a retention policy
    kept_young: list = field(default_factory=list)  # unreferenced, inside the grace period
    rescued: list = field(default_factory=list)  # planned, found in use when re-checked
    finished: bool = True  # False: a budgeted run stopped; the next call continues it
    invocations: int = 0  # calls this run has taken so far (checkpointed runs)


def references(body: bytes) -> set[Digest]:
    """Every digest a manifest names, read leniently from its JSON.

    Not the push-time parser: a manifest it refuses (schema1 written by registry:2,
    an unknown media type, a missing field) still has its blobs marked. Fields:
    config, layers, blobs (artifact manifest), manifests, subject, and schema1's
    fsLayers[].blobSum.
    """
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return set()
    if not isinstance(doc, dict):
        return set()
    found: set[Digest] = set()

    def add(value: object, key: str = "digest") -> None:
        if isinstance(value, dict) and isinstance(value.get(key), str):
            try:
                found.add(Digest.parse(value[key]))
            except DigestError:
                pass

    add(doc.get("config"))
    add(doc.get("subject"))
    for listed in ("layers", "blobs", "manifests"):
        items = doc.get(listed)
        for item in items if isinstance(items, list) else []:
            add(item)
    fs_layers = doc.get("fsLayers")
    for item in fs_layers if isinstance(fs_layers, list) else []:
        add(item, "blobSum")
    return found


def _blob_dir(digest: Digest) -> str:
    return blob_path(digest).rsplit("/", 1)[0]


def _failed(what: str, exc: Exception) -> GCError:
    return GCError(f"failed to mark: {what}: {exc}")


def _links(ctx: Context, driver: StorageDriver, directory: str, what: str) -> dict[Digest, Optional[datetime]]:
    """Digest -> mod time of each <directory>/<alg>/<hex>/link; an error is a GCError."""
    try:
        entries = list(driver.walk(ctx, directory))
    except PathNotFoundError:
        return {}
    except StorageError as exc:
        raise _failed(f"listing {what}", exc) from exc
    found: dict[Digest, Optional[datetime]] = {}
    for info in entries:
        if info.is_dir or not info.path.endswith("/link"):
            continue
        parts = info.path.split("/")
        try:
            found[Digest.parse(f"{parts[-3]}:{parts[-2]}")] = info.mod_time
        except (DigestError, IndexError):
            continue
    return found


def _tagged(ctx: Context, driver: StorageDriver, name: str) -> set[Digest]:
    """The digests the tags of `name` point at now; an error is a GCError."""
    try:
        tags = driver.list(ctx, paths.tags(name))
    except PathNotFoundError:
        return set()
    except StorageError as exc:
        raise _failed(f"listing the tags of {name}", exc) from exc
    found = set()
    for tag_dir in tags:
        tag = tag_dir.rsplit("/", 1)[1]
        try:
            link = driver.get_content(ctx, paths.tag_current_link(name, tag))
        except PathNotFoundError:
            continue  # untagged meanwhile, or an index/ without current/
        except StorageError as exc:
            raise _failed(f"reading tag {name}:{tag}", exc) from exc
        try:
            found.add(Digest.parse(link.decode("utf-8", "replace").strip()))
        except DigestError:
            log.warning("gc: tag %s:%s has a corrupt link; ignored", name, tag)
    return found


def _read_manifest(ctx: Context, driver: StorageDriver, name: str, digest: Digest) -> bytes:
    for path in (blob_path(digest), quarantine_path(digest)):
        try:
            return driver.get_content(ctx, path)
        except PathNotFoundError:
            continue  # the second place: moved aside by this very sweep
        except StorageError as exc:
            raise _failed(f"reading manifest {name}@{digest}", exc) from exc
    raise GCError(f"failed to mark: manifest {name}@{digest} is linked but its data is missing")


def _young(when: Optional[datetime], cutoff: datetime) -> bool:
    """Younger than the cutoff; an unknown time counts as young (kept)."""
    if when is None:
        return True
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when >= cutoff


@dataclass
class _Repository:
    name: str
    revisions: dict  # Digest -> link mod time
    layers: dict  # Digest -> link mod time
    refs: dict  # revision Digest -> set of Digest it names
    subjects: dict = field(default_factory=dict)  # revision Digest -> its subject's Digest
    deletable: set = field(default_factory=set)
    expired_tags: dict = field(default_factory=dict)  # tag -> (Digest, link mod time), by retention


def _kept_revisions(repo: _Repository, tagged: set, cutoff: datetime) -> set:
    """With remove_untagged: tagged manifests, what they name (index children,
    referrers of them), and manifests inside the grace period."""
    keep = {d for d in repo.revisions if d in tagged or _young(repo.revisions[d], cutoff)}
    changed = True
    while changed:
        changed = False
        for digest, refs in repo.refs.items():
            if digest in keep:
                grown = (refs & repo.revisions.keys()) - keep  # children of a kept index
                if grown:
                    keep |= grown
                    changed = True
            elif repo.subjects.get(digest) in keep:  # a referrer of a kept manifest
                keep.add(digest)
                changed = True
    return keep


def _subject_of(body: bytes) -> Optional[Digest]:
    try:
        doc = json.loads(body)
        return Digest.parse(doc["subject"]["digest"])
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, DigestError):
        return None


def _tags(ctx: Context, driver: StorageDriver, name: str) -> dict:
    """tag -> (Digest, mod time of its current link, i.e. its push time)."""
    found = {}
    for info in _walk(ctx, driver, paths.tags(name), f"the tags of {name}"):
        parts = info.path.split("/")
        if info.is_dir or parts[-2:] != ["current", "link"]:
            continue
        tag = parts[-3]
        try:
            link = driver.get_content(ctx, info.path)
        except PathNotFoundError:
            continue  # untagged meanwhile
        except StorageError as exc:
            raise _failed(f"reading tag {name}:{tag}", exc) from exc
        try:
            found[tag] = (Digest.parse(link.decode("utf-8", "replace").strip()), info.mod_time)
        except DigestError:
            log.warning("gc: tag %s:%s has a corrupt link; ignored", name, tag)
    return found


def _walk(ctx: Context, driver: StorageDriver, directory: str, what: str) -> list:
    try:
        return list(driver.walk(ctx, directory))
    except PathNotFoundError:
        return []
    except StorageError as exc:
        raise _failed(f"listing {what}", exc) from exc


def _policy_for(name: str, policies: Sequence[RetentionPolicy]) -> Optional[RetentionPolicy]:
    for policy in policies:
        if fnmatch.fnmatchcase(name, policy.repositories):
            return policy
    return None


def _mark_repository(
    ctx: Context, driver: StorageDriver, name: str, remove_untagged: bool, cutoff: datetime,
    policy: Optional[RetentionPolicy] = None, now: Optional[datetime] = None,
    immutable: Sequence[ImmutableTagRule] = (),
) -> _Repository:
    revisions = _links(ctx, driver, paths.manifest_revisions(name), f"the manifests of {name}")
    layers = _links(ctx, driver, paths.layers(name), f"the layers of {name}")
    repo = _Repository(name, revisions, layers, {})
    for digest in revisions:
        body = _read_manifest(ctx, driver, name, digest)
        repo.refs[digest] = references(body)
        subject = _subject_of(body)
        if subject is not None:
            repo.subjects[digest] = subject
    untagged_cutoff = cutoff if remove_untagged else None
    if policy is not None:
        if policy.untaggedage is not None and untagged_cutoff is None:
            untagged_cutoff = min(cutoff, (now or datetime.now(timezone.utc)) - timedelta(seconds=policy.untaggedage))
        if policy.keeptags is not None or untagged_cutoff is not None:
            tags = _tags(ctx, driver, name)
            if policy.keeptags is not None:
                # newest first by push time; an unknown time counts as newest (kept)
                # immutable tags (storage.tag.immutable) are never expired, nor counted
                mutable = [t for t in tags if immutable_rule(immutable, name, t) is None]
                ranked = sorted(mutable, key=lambda t: (_sort_time(tags[t][1]), t), reverse=True)
                repo.expired_tags = {t: tags[t] for t in ranked[policy.keeptags:] if not _young(tags[t][1], cutoff)}
            tagged = {digest for t, (digest, _) in tags.items() if t not in repo.expired_tags}
            if untagged_cutoff is not None:
                repo.deletable = set(revisions) - _kept_revisions(repo, tagged, untagged_cutoff)
            return repo
    if untagged_cutoff is not None:
        repo.deletable = set(revisions) - _kept_revisions(repo, _tagged(ctx, driver, name), untagged_cutoff)
    return repo


def _sort_time(when: Optional[datetime]) -> float:
    if when is None:
        return float("inf")
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def _repositories(ctx: Context, driver: StorageDriver) -> list[str]:
    try:
        # _layers too: a repository whose first push has no manifest yet has young links
        return catalog.repositories(ctx, driver, marker=("_manifests", "_layers"), strict=True)
    except StorageError as exc:
        raise _failed("listing repositories", exc) from exc


def _blobs(ctx: Context, driver: StorageDriver) -> dict[Digest, Optional[datetime]]:
    try:
        entries = list(driver.walk(ctx, paths.BLOBS))
    except PathNotFoundError:
        return {}
    except StorageError as exc:
        raise _failed("listing blobs", exc) from exc
    found = {}
    for info in entries:
        if info.is_dir or not info.path.endswith("/data"):
            continue
        parts = info.path.split("/")
        try:
            found[Digest.parse(f"{parts[-4]}:{parts[-2]}")] = info.mod_time
        except (DigestError, IndexError):
            continue
    return found


def collect_garbage(
    ctx: Context, driver: StorageDriver, dry_run: bool = False, remove_untagged: bool = False,
    cache: Optional[BlobDescriptorService] = None, grace: float = DEFAULT_GRACE,
    now: Optional[datetime] = None, retention: Sequence[RetentionPolicy] = (),
    immutable: Sequence[ImmutableTagRule] = (), budget: Optional[float] = None,
    clock: Callable[[], float] = time.monotonic,
) -> GCReport:
    """Mark every blob a manifest of any repository references, sweep the rest.

    Safe while the registry serves pushes and pulls (see the protocol above).
    Raises GCError, having deleted nothing unproven, when marking fails.

    The run saves its progress in CHECKPOINT as it goes. With a `budget` (seconds)
    it stops once that is spent, between two steps, and returns a report with
    `finished` False; the next call continues the same run (with the parameters and
    the grace cutoff it started with, whatever this call passes). Without one it
    runs to the end, continuing a run a budgeted call left unfinished. A dry run
    plans afresh in memory and writes nothing.
    """
    try:
        return _collect(ctx, driver, dry_run, remove_untagged, cache, grace, now, retention, immutable,
                        budget, clock)
    except StorageError as exc:  # outside marking (the marker, a move): still a stop, named
        raise GCError(f"storage failed: {exc}") from exc


def _collect(
    ctx: Context, driver: StorageDriver, dry_run: bool, remove_untagged: bool,
    cache: Optional[BlobDescriptorService], grace: float, now: Optional[datetime],
    retention: Sequence[RetentionPolicy], immutable: Sequence[ImmutableTagRule], budget: Optional[float],
    clock: Callable[[], float],
) -> GCReport:
    deadline = None if budget is None else clock() + budget
    options = _Options(remove_untagged, grace, tuple(retention), tuple(immutable))
    if dry_run:
        plan = _Run(ctx, driver, cache, options, now or datetime.now(timezone.utc), dry_run=True)
        plan.advance(None, clock)
        return plan.report
    state = gc_state(ctx, driver)
    saved = _load_checkpoint(ctx, driver)
    run: Optional[_Run] = None
    if saved is not None:
        run = _Run.restore(ctx, driver, cache, saved)
        holder = run.lease_holder()
        if holder is not None:
            raise GCBusy(f"another gc run holds {CHECKPOINT} until {holder}; it continues that run")
        sweep = run.sweep if run.phase == "sweep" else None
        if sweep is not None and sweep.step_name == "begin":
            sweep = None  # planned, nothing changed yet
        if sweep is not None and (not is_sweeping(state) or _generation(state) != sweep.generation):
            log.warning("gc: %s names a sweep that has ended (recovered?); starting a new run", CHECKPOINT)
            run = None
        elif sweep is None and is_sweeping(state):
            raise GCError(
                f"another gc is sweeping, or one was interrupted ({GC_STATE} says so); "
                "if none is running, `stratus gc --recover` puts its blobs back"
            )
        else:
            log.info("gc: continuing run %s started %s (%s)", run.id, run.started, run.phase)
    if run is None:
        if is_sweeping(state):
            raise GCError(
                f"another gc is sweeping, or one was interrupted ({GC_STATE} says so); "
                "if none is running, `stratus gc --recover` puts its blobs back"
            )
        run = _Run(ctx, driver, cache, options, now or datetime.now(timezone.utc))
    run.report.invocations = run.invocations = run.invocations + 1
    run.save(clock, budget)
    try:
        run.advance(deadline, clock, budget)
    except BaseException:
        # the run is abandoned: a mark that failed deleted nothing, and the next run
        # starts afresh; a sweep that failed has put back what it moved aside and
        # written "idle", or, if it could not, left "sweeping" for `--recover`
        _drop_checkpoint(ctx, driver)
        raise
    if run.report.finished:
        _drop_checkpoint(ctx, driver)
    else:
        run.save(clock, None, release=True)
    return run.report


def _generation(state: bytes) -> int:
    try:
        return int(state.split()[1])
    except (IndexError, ValueError):
        return 0


def _set_state(ctx: Context, driver: StorageDriver, what: str, generation: int) -> None:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    driver.put_content(ctx, GC_STATE, f"{what} {generation} {stamp}".encode())


def last_finished(state: bytes) -> Optional[datetime]:
    """When the last sweep ended ("idle <n> <time>"), None if never or if sweeping."""
    parts = state.split()
    if len(parts) < 3 or parts[0] != b"idle":
        return None
    try:
        return datetime.strptime(parts[2].decode(), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except (ValueError, UnicodeDecodeError):
        return None


# -- checkpointing ---------------------------------------------------------------------
#
# A run is a sequence of steps, each small (one repository marked, the blob
# listing, one tag expired, one manifest deleted, one candidate moved aside, one
# repository listed again, one quarantined blob decided), done in this order and
# never reordered. Its progress is saved in CHECKPOINT (JSON) every few seconds and
# when an invocation's budget is spent; the next invocation continues from there.
#
# Why a run spread over invocations loses nothing the one-shot run would keep:
#
# - The grace cutoff is fixed when the run starts (`now` - grace) and stored. A run
#   that lasts longer therefore never treats as old anything a run started at that
#   instant would have treated as young, and everything it deletes was older than
#   the grace period when it was deleted (older by the time the run has taken).
# - A mark spread over invocations is a long mark: each repository is read once,
#   and what is pushed after its turn (a manifest naming an old unreferenced blob,
#   a tag) is not in the mark, exactly as with a push during a one-shot mark. The
#   sweep's own protocol covers it: the second listing of every repository starts
#   only after "sweeping n" is written and every candidate is moved aside, so it
#   sees every revision link written before that, and a writer after it reads
#   "sweeping" and checks storage itself. The blob listing happens once, after the
#   mark: a blob written after it is no candidate, and a candidate written again
#   since (data younger than the cutoff) is kept by the re-check before its move.
# - A sweep spread over invocations keeps its order: "sweeping n" is in storage
#   from its first step to its last, whatever happens between invocations, so every
#   manifest PUT and blob commit meanwhile takes the careful path (checks in
#   storage after writing, takes back from quarantine). The second listing begins
#   after the last move and every deletion after the last listing, in whatever
#   invocation each happens. So the argument above holds with "the collector"
#   being the sequence of invocations.
# - An invocation killed before it saved repeats steps: expiring a tag, deleting a
#   manifest link and deleting a quarantined blob find nothing the second time, and
#   a candidate found already moved aside is counted as moved (so it is put back or
#   deleted with the others, never left in quarantine).
# - Between invocations, candidates wait in quarantine: a direct pull of an
#   unreferenced blob answers 404 meanwhile (a client HEADing it before a push
#   uploads it again); what a manifest accepted meanwhile names was taken back by
#   that PUT. Schedule the continuing invocations close together (the Lambda
#   schedule runs every 15 minutes; a new run starts only once
#   storage.maintenance.gc.interval has passed since the last one ended).
# - Two runners: the checkpoint carries a lease (holder, until) renewed on each
#   save; a second runner (a `stratus gc` beside the schedule) finding a live lease
#   stops with GCBusy before changing anything. Storage has no compare-and-swap, so
#   two runners starting within the same instant are not excluded: the schedule
#   must not overlap itself (its interval is longer than the function's timeout).

CHECKPOINT = f"{GC_DIR}/checkpoint"
SAVE_EVERY = 10.0  # seconds of work between two saves of the checkpoint
LEASE = 120.0  # seconds past the budget that a saved checkpoint keeps other runners away


class GCBusy(GCError):
    """Another runner holds the checkpoint's lease; nothing was changed."""


@dataclass(frozen=True)
class _Options:
    remove_untagged: bool
    grace: float
    retention: tuple
    immutable: tuple


def _time(when: Optional[datetime]) -> Optional[str]:
    return None if when is None else when.isoformat()


def _parse_time(text: Optional[str]) -> Optional[datetime]:
    return None if text is None else datetime.fromisoformat(text)


def _digests(items: Iterable[Digest]) -> list[str]:
    return sorted(str(d) for d in items)


def _load_checkpoint(ctx: Context, driver: StorageDriver) -> Optional[dict]:
    try:
        raw = driver.get_content(ctx, CHECKPOINT)
    except PathNotFoundError:
        return None
    try:
        saved = json.loads(raw)
        if saved.get("version") != 1:
            raise ValueError(f"version {saved.get('version')!r}")
        return saved
    except (ValueError, AttributeError) as exc:
        raise GCError(f"{CHECKPOINT} is unreadable ({exc}); `stratus gc --recover` removes it") from exc


def _drop_checkpoint(ctx: Context, driver: StorageDriver) -> None:
    try:
        driver.delete(ctx, CHECKPOINT)
    except PathNotFoundError:
        pass


def _repo_to_json(repo: _Repository, cutoff: datetime) -> dict:
    return {
        "name": repo.name,
        "revisions": {str(d): _time(w) for d, w in repo.revisions.items()},
        # only the young layer links count once marked (the plan's linked_young)
        "layers": {str(d): _time(w) for d, w in repo.layers.items() if _young(w, cutoff)},
        "refs": {str(d): _digests(refs) for d, refs in repo.refs.items()},
        "subjects": {str(d): str(s) for d, s in repo.subjects.items()},
        "deletable": _digests(repo.deletable),
        "expired_tags": {t: [str(d), _time(w)] for t, (d, w) in repo.expired_tags.items()},
    }


def _repo_from_json(doc: dict) -> _Repository:
    parse = Digest.parse
    return _Repository(
        name=doc["name"],
        revisions={parse(d): _parse_time(w) for d, w in doc["revisions"].items()},
        layers={parse(d): _parse_time(w) for d, w in doc["layers"].items()},
        refs={parse(d): {parse(r) for r in refs} for d, refs in doc["refs"].items()},
        subjects={parse(d): parse(s) for d, s in doc["subjects"].items()},
        deletable={parse(d) for d in doc["deletable"]},
        expired_tags={t: (parse(d), _parse_time(w)) for t, (d, w) in doc["expired_tags"].items()},
    )


class _Run:
    """One garbage collection, as steps that can stop and continue in another process."""

    def __init__(
        self, ctx: Context, driver: StorageDriver, cache: Optional[BlobDescriptorService], options: _Options,
        now: datetime, dry_run: bool = False,
    ) -> None:
        self.ctx, self.driver, self.cache = ctx, driver, cache
        self.options = options
        self.now = now
        self.cutoff = now - timedelta(seconds=options.grace)
        self.id = uuid.uuid4().hex
        self.started = datetime.now(timezone.utc)
        self.holder = uuid.uuid4().hex  # this process's claim on the checkpoint
        self.lease_until: Optional[datetime] = None
        self.saved_holder: Optional[str] = None
        self.invocations = 0
        self.phase = "mark"
        self.names: Optional[list] = None  # repositories to mark, listed once
        self.repos: list = []  # marked so far, in the order of names
        self.report = GCReport(dry_run=dry_run)
        self.report.finished = False
        self.sweep: Optional[_Sweep] = None

    # -- persistence

    def to_json(self) -> dict:
        options, report = self.options, self.report
        doc = {
            "version": 1, "id": self.id, "started": _time(self.started), "now": _time(self.now),
            "holder": self.holder, "lease_until": _time(self.lease_until), "invocations": self.invocations,
            "options": {
                "remove_untagged": options.remove_untagged, "grace": options.grace,
                "retention": [[p.repositories, p.keeptags, p.untaggedage] for p in options.retention],
                "immutable": [[r.repository, r.tags] for r in options.immutable],
            },
            "phase": self.phase, "names": self.names,
            "repos": [_repo_to_json(repo, self.cutoff) for repo in self.repos],
            "report": {
                "repositories": report.repositories, "manifests_marked": report.manifests_marked,
                "marked": _digests(report.marked), "deleted": [str(d) for d in report.deleted],
                "manifests_deleted": report.manifests_deleted, "tags_deleted": report.tags_deleted,
                "kept_young": [str(d) for d in report.kept_young], "rescued": [str(d) for d in report.rescued],
            },
        }
        if self.sweep is not None:
            doc["sweep"] = self.sweep.to_json()
        return doc

    @classmethod
    def restore(
        cls, ctx: Context, driver: StorageDriver, cache: Optional[BlobDescriptorService], doc: dict
    ) -> "_Run":
        o = doc["options"]
        options = _Options(
            o["remove_untagged"], o["grace"],
            tuple(RetentionPolicy(repositories=r, keeptags=k, untaggedage=u) for r, k, u in o["retention"]),
            tuple(ImmutableTagRule(repository=r, tags=t) for r, t in o["immutable"]),
        )
        run = cls(ctx, driver, cache, options, datetime.fromisoformat(doc["now"]))
        run.id, run.invocations = doc["id"], doc["invocations"]
        run.started = datetime.fromisoformat(doc["started"])
        run.saved_holder, run.lease_until = doc["holder"], _parse_time(doc["lease_until"])
        run.phase, run.names = doc["phase"], doc["names"]
        run.repos = [_repo_from_json(r) for r in doc["repos"]]
        r, report, parse = doc["report"], run.report, Digest.parse
        report.repositories, report.manifests_marked = r["repositories"], r["manifests_marked"]
        report.marked = {parse(d) for d in r["marked"]}
        report.deleted = [parse(d) for d in r["deleted"]]
        report.manifests_deleted, report.tags_deleted = list(r["manifests_deleted"]), list(r["tags_deleted"])
        report.kept_young = [parse(d) for d in r["kept_young"]]
        report.rescued = [parse(d) for d in r["rescued"]]
        if "sweep" in doc:
            run.sweep = _Sweep.restore(run, doc["sweep"])
        return run

    def lease_holder(self) -> Optional[str]:
        """"<holder> (<until>)" while another runner's lease is live, else None."""
        if self.lease_until is None or self.lease_until <= datetime.now(timezone.utc):
            return None
        return f"{self.lease_until.isoformat()} (runner {self.saved_holder})"

    def save(self, clock: Callable[[], float], budget: Optional[float], release: bool = False) -> None:
        """Write the checkpoint, renewing this runner's lease (or, at the end of an
        invocation, releasing it for the next)."""
        ahead = LEASE + (budget if budget is not None else SAVE_EVERY)
        self.lease_until = None if release else datetime.now(timezone.utc) + timedelta(seconds=ahead)
        self.driver.put_content(self.ctx, CHECKPOINT, json.dumps(self.to_json()).encode())
        self._saved_at = clock()

    # -- the steps

    def advance(self, deadline: Optional[float], clock: Callable[[], float], budget: Optional[float] = None) -> None:
        """Step until finished or past the deadline; at least one step per call."""
        self._saved_at = getattr(self, "_saved_at", clock())
        while not self.report.finished:
            self._step()
            if self.report.finished:
                return
            if deadline is not None and clock() >= deadline:
                return
            if not self.report.dry_run and clock() - self._saved_at >= SAVE_EVERY:
                self.save(clock, budget)

    def _step(self) -> None:
        if self.phase == "mark":
            self._mark_step()
        elif self.phase == "plan":
            self._plan()
        else:
            assert self.sweep is not None  # the phase after "plan" is "sweep", which _plan made
            self.sweep.step()
            if self.sweep.done:
                self.report.finished = True

    def _mark_step(self) -> None:
        if self.names is None:
            self.names = _repositories(self.ctx, self.driver)
        elif len(self.repos) < len(self.names):
            name, options = self.names[len(self.repos)], self.options
            self.repos.append(_mark_repository(
                self.ctx, self.driver, name, options.remove_untagged, self.cutoff,
                _policy_for(name, options.retention), self.now, options.immutable,
            ))
        if len(self.repos) == len(self.names):
            self.phase = "plan"

    def _plan(self) -> None:
        report, repos, cutoff = self.report, self.repos, self.cutoff
        report.repositories = len(repos)
        linked_young: set = set()
        for repo in repos:
            for digest, refs in repo.refs.items():
                if digest in repo.deletable:
                    continue
                report.manifests_marked += 1
                report.marked.add(digest)
                report.marked |= refs
            linked_young |= {d for d, when in repo.layers.items() if _young(when, cutoff)}
        candidates = []
        for digest, when in sorted(_blobs(self.ctx, self.driver).items(), key=lambda item: str(item[0])):
            if digest in report.marked:
                continue
            if (when is not None and _young(when, cutoff)) or digest in linked_young:
                report.kept_young.append(digest)
            else:
                candidates.append(digest)
        doomed = [(repo, d) for repo in repos for d in sorted(repo.deletable, key=str)]
        expired = [(repo, t) for repo in repos for t in sorted(repo.expired_tags)]
        for repo, tag in expired:
            log.info("gc plan: delete tag %s:%s (retention)", repo.name, tag)
        for repo, digest in doomed:
            log.info("gc plan: delete manifest %s@%s", repo.name, digest)
        for digest in candidates:
            log.info("gc plan: delete blob %s", digest)
        log.info(
            "gc plan: %d repositories, %d manifests and %d blobs marked; %d manifests and %d blobs to delete, "
            "%d unreferenced blobs inside the grace period%s",
            len(repos), report.manifests_marked, len(report.marked), len(doomed), len(candidates),
            len(report.kept_young), " (dry run)" if report.dry_run else "",
        )
        if report.dry_run:
            report.tags_deleted = [f"{repo.name}:{t}" for repo, t in expired]
            report.manifests_deleted = [f"{repo.name}@{d}" for repo, d in doomed]
            report.deleted = candidates
            report.finished = True
            return
        self.sweep = _Sweep(self.ctx, self.driver, self.cache, cutoff, repos, report)
        self.sweep.plan(doomed, candidates, expired)
        self.phase = "sweep"


_STEPS = ("begin", "expire", "manifests", "restore", "quarantine", "relist", "remark", "finish", "end")


class _Sweep:
    """The sweep of one run, step by step (see the protocol above and the
    checkpointing notes: the steps run in this order, across invocations too)."""

    def __init__(
        self, ctx: Context, driver: StorageDriver, cache: Optional[BlobDescriptorService], cutoff: datetime,
        repos: Iterable[_Repository], report: GCReport,
    ) -> None:
        self.ctx = ctx
        self.driver = driver
        self.cache = cache
        self.cutoff = cutoff
        self.repos = {repo.name: repo for repo in repos}
        self.report = report
        self.quarantined: list[Digest] = []
        self.generation = 0
        self.step_name, self.index = "begin", 0
        self.doomed: list = []
        self.candidates: list = []
        self.expired: list = []
        self.deleted: dict[str, set] = {}  # manifests deleted, by repository (for the restore step)
        self.relisted: list = []
        self.done = False

    def plan(self, doomed: list, candidates: list, expired: Sequence = ()) -> None:
        self.doomed, self.candidates, self.expired = list(doomed), list(candidates), list(expired)

    def to_json(self) -> dict:
        return {
            "generation": self.generation, "step": self.step_name, "index": self.index,
            "doomed": [[repo.name, str(d)] for repo, d in self.doomed],
            "candidates": [str(d) for d in self.candidates],
            "expired": [[repo.name, t] for repo, t in self.expired],
            "quarantined": [str(d) for d in self.quarantined],
            "deleted": {name: _digests(ds) for name, ds in self.deleted.items()},
            "relisted": self.relisted,
        }

    @classmethod
    def restore(cls, run: "_Run", doc: dict) -> "_Sweep":
        sweep = cls(run.ctx, run.driver, run.cache, run.cutoff, run.repos, run.report)
        parse = Digest.parse
        sweep.generation, sweep.step_name, sweep.index = doc["generation"], doc["step"], doc["index"]
        sweep.doomed = [(sweep.repos[name], parse(d)) for name, d in doc["doomed"]]
        sweep.candidates = [parse(d) for d in doc["candidates"]]
        sweep.expired = [(sweep.repos[name], t) for name, t in doc["expired"]]
        sweep.quarantined = [parse(d) for d in doc["quarantined"]]
        sweep.deleted = {name: {parse(d) for d in ds} for name, ds in doc["deleted"].items()}
        sweep.relisted = list(doc["relisted"])
        return sweep

    def step(self) -> None:
        """One step; on a failure, what was moved aside is put back and the state
        says "idle" again (or the error says why not), then GCError."""
        try:
            self._step()
        except BaseException as exc:
            self._put_back(self.quarantined)  # raises, still "sweeping", if it cannot
            self._end()
            if isinstance(exc, StorageError):
                exc = GCError(f"storage failed: {exc}")
            if isinstance(exc, GCError):
                stopped = GCError(f"sweep stopped, blobs moved aside put back: {exc}")
                stopped.phase = "sweep"
                raise stopped from exc
            raise

    def _next(self, step: str) -> None:
        self.step_name, self.index = step, 0

    def _step(self) -> None:
        ctx, driver, name = self.ctx, self.driver, self.step_name
        if name == "begin":
            self.generation = _generation(gc_state(ctx, driver)) + 1
            _set_state(ctx, driver, "sweeping", self.generation)
            self._next("expire")
        elif name == "expire":
            if self.index < len(self.expired):
                self._expire_tags([self.expired[self.index]])
                self.index += 1
            else:
                self._next("manifests")
        elif name == "manifests":
            if self.index < len(self.doomed):
                self._delete_manifest(*self.doomed[self.index])
                self.index += 1
            else:
                self._next("restore")
        elif name == "restore":
            self._restore_tagged()
            self._next("quarantine")
        elif name == "quarantine":
            if self.index < len(self.candidates):
                self._quarantine(self.candidates[self.index])
                self.index += 1
            else:
                self._next("relist" if self.quarantined else "finish")
        elif name == "relist":
            self.relisted = _repositories(ctx, driver)
            self._next("remark")
        elif name == "remark":
            if self.index < len(self.relisted):
                self._mark_again(self.relisted[self.index])
                self.index += 1
            else:
                self._next("finish")
        elif name == "finish":
            if self.index < len(self.quarantined):
                self._finish(self.quarantined[self.index])
                self.index += 1
            else:
                self._next("end")
        else:
            self._end()
            self.done = True
            log.info(
                "gc: deleted %d manifests and %d blobs; %d put back after the re-check",
                len(self.report.manifests_deleted), len(self.report.deleted), len(self.report.rescued),
            )

    def _finish(self, digest: Digest) -> None:
        ctx, driver = self.ctx, self.driver
        if digest in self.report.marked:
            self._put_back([digest])
            self.report.rescued.append(digest)
            log.info("gc: %s is in use after all; put back", digest)
            return
        try:
            driver.delete(ctx, quarantine_path(digest).rsplit("/", 1)[0])
        except PathNotFoundError:
            if digest not in self.report.deleted:  # not this step run twice: a writer took it back
                self.report.rescued.append(digest)
            return
        self._clear_cache(digest)
        self.report.deleted.append(digest)

    def _delete_manifest(self, repo: _Repository, digest: Digest) -> None:
        ctx, driver = self.ctx, self.driver
        if digest not in repo.deletable:  # its expired tag was pushed again
            return
        link = paths.manifest_revision_link(repo.name, digest.algorithm.value, digest.hex)
        try:
            info = driver.stat(ctx, link)
        except PathNotFoundError:
            return
        except StorageError as exc:
            raise GCError(f"re-checking manifest {repo.name}@{digest}: {exc}") from exc
        if _young(info.mod_time, self.cutoff):  # pushed again since the mark
            self._keep_manifest(repo, digest)
            return
        driver.delete(ctx, link.rsplit("/", 1)[0])
        subject = repo.subjects.get(digest)
        if subject is not None:
            try:
                ReferrersIndex(driver, repo.name).remove(ctx, subject, digest)
            except StorageError:
                pass  # the referrers list skips entries whose manifest is gone
        self.deleted.setdefault(repo.name, set()).add(digest)
        self.report.manifests_deleted.append(f"{repo.name}@{digest}")

    def _restore_tagged(self) -> None:
        """The re-check: a tag pushed onto a deleted manifest meanwhile brings it back
        (a tag PUT re-links its revision after tagging when it sees the marker)."""
        ctx, driver = self.ctx, self.driver
        for name, digests in self.deleted.items():
            repo = self.repos[name]
            back = _tagged(ctx, driver, name) & digests
            while back:
                digest = back.pop()
                driver.put_content(
                    ctx, paths.manifest_revision_link(name, digest.algorithm.value, digest.hex), str(digest).encode()
                )
                self.report.manifests_deleted.remove(f"{name}@{digest}")
                digests.discard(digest)
                self._keep_manifest(repo, digest)
                back |= repo.refs.get(digest, set()) & digests  # its children come back too

    def _expire_tags(self, expired: Sequence) -> None:
        """Untag what retention expired, re-checked: a tag pushed again since the
        plan (another digest, or its link rewritten) stays, and so does its manifest.

        A tag pushed in the instant between this re-check and the delete is lost
        (not its manifest: that one is young, and stays until it is older than the
        policy's untaggedage)."""
        ctx, driver = self.ctx, self.driver
        for repo, tag in expired:
            digest, planned_time = repo.expired_tags[tag]
            link = paths.tag_current_link(repo.name, tag)
            try:
                info = driver.stat(ctx, link)
                now_digest = Digest.parse(driver.get_content(ctx, link).decode("utf-8", "replace").strip())
            except PathNotFoundError:
                continue
            except (StorageError, DigestError) as exc:
                raise GCError(f"re-checking tag {repo.name}:{tag}: {exc}") from exc
            if now_digest != digest or info.mod_time != planned_time or _young(info.mod_time, self.cutoff):
                self._keep_manifest(repo, now_digest)
                self._keep_manifest(repo, digest)
                continue
            try:
                driver.delete(ctx, paths.tag_dir(repo.name, tag))
            except PathNotFoundError:
                continue
            self.report.tags_deleted.append(f"{repo.name}:{tag}")

    def _keep_manifest(self, repo: _Repository, digest: Digest) -> None:
        repo.deletable.discard(digest)
        self.report.marked.add(digest)
        self.report.marked |= repo.refs.get(digest, set())

    def _quarantine(self, digest: Digest) -> None:
        ctx, driver = self.ctx, self.driver
        if digest in self.report.marked:  # named by a manifest the re-checks kept
            self.report.rescued.append(digest)
            return
        try:
            info = driver.stat(ctx, blob_path(digest))
        except PathNotFoundError:
            if digest not in self.quarantined and self._aside(digest):
                self.quarantined.append(digest)  # moved by an invocation killed before it saved
            return
        except StorageError as exc:
            raise GCError(f"re-checking blob {digest}: {exc}") from exc
        if _young(info.mod_time, self.cutoff):
            self.report.rescued.append(digest)
            return
        if not self._clear_cache(digest):
            self.report.rescued.append(digest)  # kept: a shared cache could go on claiming it
            return
        driver.move(ctx, blob_path(digest), quarantine_path(digest))
        self.quarantined.append(digest)
        self._clear_cache(digest)  # an entry written back from a stat just before the move

    def _mark_again(self, name: str) -> None:
        """The re-check of one repository: what it references now that the
        candidates are moved aside (manifests the mark had not seen, young links)."""
        ctx, driver = self.ctx, self.driver
        aside = set(self.quarantined)
        known = self.repos.get(name)
        seen = set(known.refs) - known.deletable if known is not None else set()
        for digest in _links(ctx, driver, paths.manifest_revisions(name), f"the manifests of {name}"):
            if digest in seen:
                continue
            self.report.marked.add(digest)
            self.report.marked |= references(_read_manifest(ctx, driver, name, digest))
        for digest, when in _links(ctx, driver, paths.layers(name), f"the layers of {name}").items():
            if digest in aside and _young(when, self.cutoff):
                self.report.marked.add(digest)

    def _aside(self, digest: Digest) -> bool:
        try:
            self.driver.stat(self.ctx, quarantine_path(digest))
            return True
        except PathNotFoundError:
            return False

    def _end(self) -> None:
        _set_state(self.ctx, self.driver, "idle", self.generation)

    def _put_back(self, digests: list) -> None:
        failed = []
        for digest in digests:
            try:
                self.driver.move(self.ctx, quarantine_path(digest), blob_path(digest))
            except PathNotFoundError:
                pass  # already put back or finished
            except StorageError as exc:
                failed.append(f"{digest}: {exc}")
        if failed:
            raise GCError(
                "could not put back blobs moved aside; they are intact under "
                f"{QUARANTINE}, and `stratus gc --recover` retries: " + "; ".join(failed)
            )

    def _clear_cache(self, digest: Digest) -> bool:
        if self.cache is None:
            return True
        try:
            self.cache.clear(self.ctx, digest)
            return True
        except Exception as exc:  # noqa: BLE001 - any cache failure
            if getattr(self.cache, "shared", False):
                log.warning("gc: could not clear %s from the shared cache (%s); kept", digest, exc)
                return False
            return True


def recover(ctx: Context, driver: StorageDriver) -> list[Digest]:
    """After an interrupted sweep: put every blob moved aside back, remove the marker."""
    restored = []
    try:
        entries = list(driver.walk(ctx, QUARANTINE))
    except PathNotFoundError:
        entries = []
    for info in entries:
        if info.is_dir or not info.path.endswith("/data"):
            continue
        parts = info.path.split("/")
        digest = Digest.parse(f"{parts[-3]}:{parts[-2]}")
        driver.move(ctx, info.path, blob_path(digest))
        restored.append(digest)
    _set_state(ctx, driver, "idle", _generation(gc_state(ctx, driver)) + 1)
    _drop_checkpoint(ctx, driver)  # the run it belonged to is over
    return restored


# -- scheduled maintenance (Lambda schedule, Azure timer) ------------------------------


def invocation_budget(configured: Optional[float], remaining: Optional[float]) -> Optional[float]:
    """Seconds one scheduled invocation may work: storage.maintenance.gc.budget,
    capped by the platform's remaining time less a margin for the last step and
    the checkpoint (a fifth of it, at least 30 s); at least 1 s."""
    if remaining is None:
        return configured
    room = max(1.0, remaining - max(30.0, remaining * 0.2))
    return room if configured is None else min(configured, room)


def scheduled_gc(
    ctx: Context, driver: StorageDriver, storage: StorageConfig, cache: Optional[BlobDescriptorService] = None,
    budget: Optional[float] = None, now: Optional[datetime] = None,
) -> dict:
    """One scheduled invocation of gc with retention (`storage` is a StorageConfig).

    Continues the run a CHECKPOINT holds; else starts one if
    storage.maintenance.gc.interval has passed since the last one ended. Returns
    what it did as a JSON-able summary; a GCError (a mark or sweep that stopped)
    propagates, so the platform counts the invocation as failed."""
    if not storage.gc_enabled or storage.readonly:
        return {"skipped": "disabled" if not storage.gc_enabled else "readonly"}
    gc = functools.partial(
        collect_garbage, ctx, driver,
        remove_untagged=storage.gc_deleteuntagged, cache=cache, grace=storage.gc_graceperiod,
        retention=storage.retention, immutable=storage.tag_immutable, now=now,
    )
    if storage.gc_dryrun:
        return _summary(gc(dry_run=True))
    if _load_checkpoint(ctx, driver) is None:
        last = last_finished(gc_state(ctx, driver))
        current = now or datetime.now(timezone.utc)
        if last is not None and current - last < timedelta(seconds=storage.gc_interval):
            return {"skipped": "interval", "last_finished": last.isoformat()}
    try:
        report = gc(budget=budget)
    except GCBusy as exc:
        log.info("gc: %s", exc)
        return {"skipped": "busy"}
    return _summary(report)


def _summary(report: GCReport) -> dict:
    summary = {
        "finished": report.finished, "dryrun": report.dry_run, "invocations": report.invocations,
        "tags_deleted": report.tags_deleted, "manifests_deleted": report.manifests_deleted,
        "blobs_deleted": [str(d) for d in report.deleted],
    }
    if report.finished:
        summary.update(repositories=report.repositories, manifests_marked=report.manifests_marked,
                       blobs_marked=len(report.marked), kept_young=len(report.kept_young),
                       rescued=len(report.rescued))
    log.info("scheduled gc: %s", {k: v if not isinstance(v, list) else len(v) for k, v in summary.items()})
    return summary
