"""A private Docker daemon for the client tests: Debian's dockerd over a containerd of its own.

Nothing is shared with a system docker: containerd gets its own root, state, socket
and config; dockerd its own data root, exec root, socket, pidfile and daemon.json,
`--bridge=none --iptables=false --ip-masq=false --storage-driver=vfs`, and no
container ever runs (dockerd only imports, pushes and pulls here). The CLI talks to
the private socket through `DOCKER_HOST` and keeps `docker login` credentials in a
private `DOCKER_CONFIG`. Images are made with `docker import` of a tarball built
here, so no registry outside the machine is needed.

    from .docker_daemon import docker_daemon_fixture  # noqa: F401  (the fixture `docker_daemon`)

    def test_push(docker_daemon, registry_url):
        image = docker_daemon.image_with_layer(8)         # ImportedImage(tag, id, diff_id, size)
        ref = docker_daemon.tag(image, f"{registry_url.split('://')[1]}/team/app:v1")
        docker_daemon.docker("push", ref)                 # stdout, or AssertionError with dockerd's log
        docker_daemon.rmi(ref, image.tag)
        docker_daemon.docker("pull", ref)
        assert docker_daemon.image_id(ref) == image.id

Both daemons are stopped by pid, with their process groups and any descendants,
however the test ends. docker treats registries on 127.0.0.0/8 as insecure, so
`127.0.0.1:<port>` works over plain HTTP with no daemon configuration.
"""
from __future__ import annotations

import ctypes
import json
import mmap
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path

import pytest

from .servers import stop

DOCKERD = "/usr/sbin/dockerd"
CONTAINERD = "/usr/bin/containerd"
# The CLI of the docker.io package, not whatever `docker` comes first on PATH
# (these machines also carry a newer static CLI in /usr/local/bin).
DOCKER_CLI = "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else (shutil.which("docker") or "docker")
START_TIMEOUT = 60.0
PR_SET_PDEATHSIG = 1
MiB = 1 << 20


def unavailable_reason() -> str | None:
    """Why a private docker daemon cannot be started here, or None."""
    missing = [path for path in (DOCKERD, CONTAINERD, DOCKER_CLI) if not os.access(path, os.X_OK)]
    if missing:
        return f"needs Debian's docker.io and containerd ({', '.join(missing)} missing; scripts/install-system-deps.sh)"
    if os.geteuid() != 0:
        return "dockerd needs root"
    return None


def require_docker() -> None:
    """Skip with the reason when docker is missing; under CI=true, fail instead."""
    reason = unavailable_reason()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"docker unavailable under CI: {reason}", pytrace=False)
        pytest.skip(reason)


# -- processes --------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    """Every live descendant of pid, found through /proc (a shim may leave its process group)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill(pids: Sequence[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _stop(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """servers.stop (SIGTERM the process group, SIGKILL if it lingers), then SIGKILL any
    descendants that left the group."""
    descendants = _children(proc.pid)
    stop(proc, timeout)
    _kill([pid for pid in descendants if Path(f"/proc/{pid}").exists()], signal.SIGKILL)


def _tail(path: Path, size: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return "(no log)"


def _connects(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False


def _ping(path: Path) -> bool:
    """GET /_ping on dockerd's socket answers OK once the API is up."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2)
        try:
            s.connect(str(path))
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
        except OSError:
            return False
    return reply.startswith(b"HTTP/1.") and b" 200 " in reply.split(b"\r\n", 1)[0] and reply.endswith(b"OK")


def _wait(ready, proc: subprocess.Popen, what: str, log: Path, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} while starting; its log ({log}):\n{_tail(log)}")
        if ready():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready after {timeout:.0f}s; its log ({log}):\n{_tail(log)}")


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies, even by SIGKILL."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _spawn(argv: list[str], log: Path) -> subprocess.Popen:
    # the death signal follows the thread that forks: only the main thread lives as long as the run
    on_death = _die_with_parent if threading.current_thread() is threading.main_thread() else None
    with open(log, "wb") as out:
        # a session of its own: stopped as a process group, never by name
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=_daemon_env(), preexec_fn=on_death)


def _daemon_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "CONTAINERD_"))}
    # a proxy in the environment would send pushes to 127.0.0.1 elsewhere
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env.pop(key, None)
    return env


def _dockerd_knows_key_path() -> bool:
    """dockerd up to 24 writes a trust key to /etc/docker/key.json unless daemon.json's
    `deprecated-key-path` moves it; newer ones have no key and reject that setting."""
    with open(DOCKERD, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as binary:
        return binary.find(b'json:"deprecated-key-path') >= 0


def _short_dir(workdir: Path, stack: ExitStack) -> Path:
    """Where the sockets go: workdir unless its path is too long for a unix socket (108 bytes)."""
    if len(str(workdir / "containerd" / "containerd.sock.ttrpc")) < 100:
        return workdir
    short = Path(tempfile.mkdtemp(prefix="stratus-docker-"))
    stack.callback(shutil.rmtree, short, ignore_errors=True)
    return short


def _containerd_config(root: Path, sockets: Path) -> Path:
    config = root / "config.toml"
    config.write_text(
        "version = 2\n"
        f'root = "{root / "root"}"\n'
        f'state = "{root / "state"}"\n'
        f'plugin_dir = "{root / "plugins"}"\n'
        # no Kubernetes CRI here: it would want CNI and a sandbox image
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{sockets / "containerd.sock"}"\n'
        f'[ttrpc]\n  address = "{sockets / "containerd.sock.ttrpc"}"\n'
        '[debug]\n  address = ""\n'
        '[metrics]\n  address = ""\n'
        # else containerd creates /opt/containerd
        f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{root / "opt"}"\n'
    )
    return config


# -- the daemon -------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportedImage:
    tag: str        # the local reference docker import gave it, e.g. stratus-test/8mib-1a2b3c:latest
    id: str         # the image ID, sha256 of its config
    diff_id: str    # sha256 of the uncompressed layer tarball (the config's rootfs.diff_ids[0])
    size: int       # bytes of that tarball


@dataclass
class DockerDaemon:
    workdir: Path
    socket: Path
    config_dir: Path    # DOCKER_CONFIG of docker(): `docker login` writes config.json here
    log: Path
    containerd_log: Path
    start_seconds: float = 0.0

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def env(self, config_dir: Path | None = None) -> dict[str, str]:
        """The environment for a docker CLI talking to this daemon (and no other)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env.update(DOCKER_HOST=self.host, DOCKER_CONFIG=str(config_dir or self.config_dir))
        return env

    def run(self, *args: str, input: str | None = None, timeout: float = 240,
            config_dir: Path | None = None) -> subprocess.CompletedProcess:
        """The docker CLI with args; returns the finished process whatever its exit status."""
        return subprocess.run([DOCKER_CLI, *args], input=input, capture_output=True, text=True,
                              timeout=timeout, env=self.env(config_dir), check=False)

    def docker(self, *args: str, input: str | None = None, timeout: float = 240,
               config_dir: Path | None = None) -> str:
        """The docker CLI with args; its stdout, or AssertionError with its output and the daemon's log."""
        done = self.run(*args, input=input, timeout=timeout, config_dir=config_dir)
        if done.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} exited {done.returncode}:\n{done.stderr}{done.stdout}\n"
                f"-- dockerd log ({self.log}) --\n{_tail(self.log, 2000)}"
            )
        return done.stdout

    # -- images --------------------------------------------------------------------

    def image_with_layer(self, size_mib: float, name: str | None = None) -> ImportedImage:
        """`docker import` of a one-layer rootfs holding size_mib MiB of random bytes
        (plus a small marker file), so every call makes a new image."""
        nonce = uuid.uuid4().hex[:12]
        tag = name or f"stratus-test/{str(size_mib).replace('.', '_')}mib-{nonce}:latest"
        tarball = self.workdir / "layers" / f"{nonce}.tar"
        tarball.parent.mkdir(exist_ok=True)
        diff_id, size = _write_rootfs(tarball, int(size_mib * MiB), nonce)
        try:
            image_id = self.docker("import", str(tarball), tag, timeout=600).strip()
        finally:
            tarball.unlink()
        return ImportedImage(tag, image_id, diff_id, size)

    def tag(self, image: ImportedImage | str, ref: str) -> str:
        self.docker("tag", image.tag if isinstance(image, ImportedImage) else image, ref)
        return ref

    def inspect(self, ref: str) -> dict | None:
        """`docker image inspect` of ref, or None when the daemon has no such image."""
        done = self.run("image", "inspect", ref)
        if done.returncode != 0:
            if "No such image" in done.stderr:
                return None
            raise AssertionError(f"docker image inspect {ref}: {done.stderr}")
        return json.loads(done.stdout)[0]

    def image_id(self, ref: str) -> str:
        info = self.inspect(ref)
        assert info is not None, f"no image {ref} in the daemon"
        return info["Id"]

    def diff_ids(self, ref: str) -> list[str]:
        info = self.inspect(ref)
        assert info is not None, f"no image {ref} in the daemon"
        return info["RootFS"]["Layers"]

    def rmi(self, *refs: str) -> None:
        """Remove refs (tags or IDs) and, once untagged, their layers."""
        self.docker("rmi", "--force", *refs)

    def fresh_config(self, directory: Path) -> Path:
        """A DOCKER_CONFIG of its own (for config_dir=), so one test's login is not another's."""
        directory.mkdir(parents=True, exist_ok=True)
        # no credsStore: `docker login` writes auths into config.json, never into a keyring
        (directory / "config.json").write_text(json.dumps({"auths": {}}))
        return directory

    def login(self, registry: str, user: str, password: str, config_dir: Path | None = None) -> str:
        return self.docker("login", "--username", user, "--password-stdin", registry,
                           input=password, timeout=60, config_dir=config_dir)

    def logout(self, registry: str, config_dir: Path | None = None) -> None:
        self.run("logout", registry, timeout=60, config_dir=config_dir)


def _write_rootfs(path: Path, size: int, nonce: str) -> tuple[str, int]:
    """An uncompressed rootfs tarball with `data/random.bin` of size random bytes; returns
    (sha256 digest of the tarball, its size). docker import keeps the tarball's bytes as
    the layer, so that digest is the image's diff ID."""

    class Random:
        def __init__(self, remaining: int) -> None:
            self.remaining = remaining

        def read(self, n: int = -1) -> bytes:
            n = self.remaining if n < 0 else min(n, self.remaining)
            self.remaining -= n
            return os.urandom(n)

    def info(name: str, length: int = 0, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
        entry = tarfile.TarInfo(name)
        entry.size, entry.type, entry.mtime = length, kind, 1_700_000_000
        entry.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
        return entry

    marker = f"stratus docker test image {nonce}\n".encode()
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info("etc", kind=tarfile.DIRTYPE))
        tar.addfile(info("etc/stratus-test", len(marker)), _Bytes(marker))
        tar.addfile(info("data", kind=tarfile.DIRTYPE))
        tar.addfile(info("data/random.bin", size), Random(size))
    digest = sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest(), path.stat().st_size


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, n: int = -1) -> bytes:
        data, self.data = (self.data, b"") if n < 0 else (self.data[:n], self.data[n:])
        return data


@contextmanager
def docker_daemon_running(workdir: Path, settings: dict | None = None) -> Iterator[DockerDaemon]:
    """containerd and dockerd, private to workdir, until the block ends; settings go into
    its daemon.json (e.g. {"insecure-registries": ["10.0.0.5:5000"]} for a registry off loopback).

    The session fixture shares one daemon; this gives a test a daemon of its own, e.g. to
    pull into a state that has never seen the image."""
    workdir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        sockets = _short_dir(workdir, stack)
        started = time.monotonic()

        containerd_root = workdir / "containerd"
        containerd_root.mkdir(exist_ok=True)
        # layers are whole copies under vfs: drop them once both daemons have stopped (logs stay)
        for bulky in (workdir / "data-root", containerd_root / "root", workdir / "layers"):
            stack.callback(shutil.rmtree, bulky, ignore_errors=True)
        (sockets / "containerd").mkdir(exist_ok=True)
        containerd_socket = sockets / "containerd" / "containerd.sock"
        config = _containerd_config(containerd_root, sockets / "containerd")
        containerd_log = workdir / "containerd.log"
        containerd = _spawn([CONTAINERD, "--config", str(config)], containerd_log)
        stack.callback(_stop, containerd)
        _wait(lambda: _connects(containerd_socket), containerd, "containerd", containerd_log)

        daemon_json = workdir / "daemon.json"
        settings = dict(settings or {})
        if _dockerd_knows_key_path():
            settings.setdefault("deprecated-key-path", str(workdir / "key.json"))
        daemon_json.write_text(json.dumps(settings))
        docker_socket = sockets / "docker.sock"
        log = workdir / "dockerd.log"
        dockerd = _spawn([
            DOCKERD,
            "--config-file", str(daemon_json),
            "--data-root", str(workdir / "data-root"),
            "--exec-root", str(workdir / "exec-root"),
            "--host", f"unix://{docker_socket}",
            "--pidfile", str(workdir / "dockerd.pid"),
            "--containerd", str(containerd_socket),
            "--bridge=none", "--iptables=false", "--ip-masq=false", "--ip6tables=false",
            "--userland-proxy=false", "--storage-driver=vfs",
        ], log)
        stack.callback(_stop, dockerd)
        try:
            _wait(lambda: _ping(docker_socket), dockerd, "dockerd", log)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n-- containerd log ({containerd_log}) --\n{_tail(containerd_log, 2000)}") from None

        daemon = DockerDaemon(workdir, docker_socket, workdir / "docker-config", log, containerd_log,
                              start_seconds=time.monotonic() - started)
        daemon.fresh_config(daemon.config_dir)
        yield daemon


_DAEMON = pytest.StashKey[DockerDaemon]()


@pytest.fixture(scope="session", name="docker_daemon")
def docker_daemon_fixture(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> DockerDaemon:
    """One private docker daemon for the whole session, whichever modules import this fixture.

    Skips when docker is missing (fails under CI=true). Kept in the config's stash, so
    modules that each import the fixture still share one daemon; stopped at the end of
    the run."""
    require_docker()
    daemon = request.config.stash.get(_DAEMON, None)
    if daemon is None:
        stack = ExitStack()
        request.config.add_cleanup(stack.close)
        daemon = stack.enter_context(docker_daemon_running(tmp_path_factory.mktemp("dockerd")))
        request.config.stash[_DAEMON] = daemon
    return daemon
