"""The course's JupyterHub (hub/, `make hub`): its settings, then, for real and slow (several minutes), the hub
on 127.0.0.1 with its npm proxy, two learners logged in through its login form, a server each, 00 and 01 (smoke) run
by a kernel in each learner's own server, the two runs checked apart; then a class's grading: the educator releases
01's exercises with nbgrader, one learner submits them solved and the other untouched (each from their own server),
the educator collects and autogrades them (solved passes, untouched fails) into one class table with the runs; and
everything stopped, nothing left running. Each learner's peak memory and CPU seconds are measured on the way
(HUB_SIZING_RECORD=path writes them as a record for docs/measurements/).

As root the hub gives each learner a system account (created here, removed afterwards); otherwise one-account mode.
The slow test is skipped, with the reason, where JupyterHub or the proxy is not installed (`make hub-setup` installs
both; `make test-hub` runs this file, as CI does); COURSE_REQUIRE_HUB=1 (CI) turns that skip into a failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests

from phi3course import processes
from phi3course.paths import cache_dir, course_root

HUB_DIR = course_root() / "hub"
sys.path.insert(0, str(HUB_DIR))
import course_hub  # noqa: E402

ROOT = os.geteuid() == 0


def _missing() -> str | None:
    try:
        import jupyterhub  # noqa: F401
        import jupyterhub_idle_culler  # noqa: F401
    except ImportError as error:
        return f"JupyterHub is not installed ({error}); `make hub-setup` installs it"
    try:
        course_hub.proxy_command()
    except course_hub.HubSettingError as error:
        return str(error)
    return None


PASSWORD = "a-workshop-password"
ADMIN_PASSWORD = "an-educator-password-of-32-characters-or-more"


def settings(is_root: bool = True, **env: str) -> course_hub.HubSettings:
    base = {"HUB_WORKSHOP_PASSWORD": PASSWORD, "HUB_ADMIN_PASSWORD": ADMIN_PASSWORD}
    return course_hub.HubSettings.from_env({**base, **env}, is_root=is_root)


def test_the_hub_listens_on_loopback_unless_told_and_then_only_with_tls(tmp_path: Path) -> None:
    assert settings().ip == "127.0.0.1"
    with pytest.raises(course_hub.HubSettingError, match="HUB_SSL_CERT and HUB_SSL_KEY"):
        settings(HUB_IP="0.0.0.0")
    with pytest.raises(course_hub.HubSettingError, match="HUB_SSL_CERT and HUB_SSL_KEY"):
        settings(HUB_IP="10.0.0.5", HUB_SSL_CERT=str(tmp_path / "hub.crt"))
    assert settings(HUB_IP="0.0.0.0", HUB_SSL_CERT="hub.crt", HUB_SSL_KEY="hub.key").ssl_key == "hub.key"
    # Other machines never reach a hub whose learners share one account.
    with pytest.raises(course_hub.HubSettingError, match="an account of their own"):
        settings(HUB_IP="0.0.0.0", HUB_SSL_CERT="hub.crt", HUB_SSL_KEY="hub.key", HUB_ACCOUNTS="one")
    with pytest.raises(course_hub.HubSettingError, match="an account of their own"):
        settings(is_root=False, HUB_IP="0.0.0.0", HUB_SSL_CERT="hub.crt", HUB_SSL_KEY="hub.key")


def test_accounts_per_learner_as_root_one_account_otherwise() -> None:
    assert settings(is_root=True).system_accounts and not settings(is_root=False).system_accounts
    assert not settings(is_root=True, HUB_ACCOUNTS="one").system_accounts
    with pytest.raises(course_hub.HubSettingError, match="needs root"):
        settings(is_root=False, HUB_ACCOUNTS="system")
    with pytest.raises(course_hub.HubSettingError, match="use system"):
        settings(HUB_ACCOUNTS="each")


def test_passwords_come_from_the_environment_or_a_file_and_are_checked(tmp_path: Path) -> None:
    secret = tmp_path / "workshop-password"
    secret.write_text("from-a-file-123\n")
    assert course_hub.HubSettings.from_env({"HUB_WORKSHOP_PASSWORD_FILE": str(secret)}).workshop_password == (
        "from-a-file-123"
    )
    with pytest.raises(course_hub.HubSettingError, match="at least 8 characters"):
        course_hub.HubSettings.from_env({})
    with pytest.raises(course_hub.HubSettingError, match="at least 8 characters"):
        settings(HUB_WORKSHOP_PASSWORD="short")
    with pytest.raises(course_hub.HubSettingError, match="cannot be read"):
        course_hub.HubSettings.from_env({"HUB_WORKSHOP_PASSWORD_FILE": str(tmp_path / "none")})
    with pytest.raises(course_hub.HubSettingError, match="HUB_ADMIN_PASSWORD must have at least 32"):
        settings(HUB_ADMIN_PASSWORD="too-short-for-the-admin")
    with pytest.raises(course_hub.HubSettingError, match="differ from the workshop password"):
        settings(HUB_WORKSHOP_PASSWORD=ADMIN_PASSWORD)


def test_each_learner_gets_their_own_course_copy_run_folder_and_prompt_flow_home(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    ana, ben = (course_hub.learner_env(tmp_path / name, cache) for name in ("ana", "ben"))
    assert ana["COURSE_ROOT"] == str(tmp_path / "ana" / course_hub.COURSE_FOLDER)
    assert set(ana) == {"HOME", "COURSE_ROOT", "PF_HOME_DIRECTORY", "COURSE_CACHE"}
    assert {key for key in ana if ana[key] == ben[key]} == {"COURSE_CACHE"}  # only the read-only models are shared
    # The copy is made once: a learner's edits survive the next spawn.
    source = tmp_path / "course"
    (source / "notebooks").mkdir(parents=True)
    (source / "notebooks" / "01_data.ipynb").write_text("released")
    for left_out in ("runs/local", ".venv/bin", "hub/state/homes", "notebooks/__pycache__"):
        (source / left_out).mkdir(parents=True)
    (source / "notebooks" / "state").mkdir()  # a folder named like the hub's state, elsewhere, is the course's
    copy = tmp_path / "ana" / course_hub.COURSE_FOLDER
    assert course_hub.copy_course(source, copy)
    copied = sorted(path.relative_to(copy).as_posix() for path in copy.rglob("*"))
    assert copied == ["hub", "notebooks", "notebooks/01_data.ipynb", "notebooks/state"]  # no runs, environment, state
    (copy / "notebooks" / "01_data.ipynb").write_text("the learner's work")
    assert not course_hub.copy_course(source, copy)
    assert (copy / "notebooks" / "01_data.ipynb").read_text() == "the learner's work"


def test_the_course_link_and_the_nbgrader_settings_each_learner_gets(tmp_path: Path) -> None:
    from urllib.parse import parse_qs, urlsplit

    link = course_hub.git_pull_link("https://hub.example.org/", "https://git.example.org/phi3-course.git", "spring")
    parts = urlsplit(link)
    assert parts.path == "/hub/user-redirect/git-pull"  # through the hub's login to the learner's own server
    assert parse_qs(parts.query) == {
        "repo": ["https://git.example.org/phi3-course.git"],
        "branch": ["spring"],
        "targetpath": [course_hub.COURSE_FOLDER],
        "urlpath": [f"lab/tree/{course_hub.COURSE_FOLDER}/notebooks"],
    }
    assert settings(HUB_COURSE_REPO="file:///srv/phi3-course.git").course_repo == "file:///srv/phi3-course.git"
    assert settings().course_repo is None  # else the hub's checkout is copied
    # The exchange: nbgrader's default with learners' own accounts, under the hub's state otherwise.
    assert settings(is_root=True).exchange_dir == course_hub.DEFAULT_EXCHANGE
    assert settings(is_root=False, HUB_STATE_DIR=str(tmp_path)).exchange_dir == tmp_path.resolve() / "exchange"
    with pytest.raises(course_hub.HubSettingError, match="HUB_COURSE_ID"):
        settings(HUB_COURSE_ID="phi3 course")
    course_hub.prepare_exchange(tmp_path / "exchange")
    assert (tmp_path / "exchange").stat().st_mode & 0o7777 == 0o1777  # all submit, none removes another's
    (tmp_path / "ana").mkdir()
    config = course_hub.nbgrader_learner_config(tmp_path / "ana", "phi3-course", tmp_path / "exchange", "ana")
    from traitlets.config.loader import PyFileConfigLoader

    c = PyFileConfigLoader(config.name, path=str(config.parent)).load_config()  # as nbgrader reads it
    assert dict(c.CourseDirectory) == {"course_id": "phi3-course", "student_id": "ana"}
    assert dict(c.Exchange) == {
        "root": str(tmp_path / "exchange"),
        "assignment_dir": str(tmp_path / "ana" / course_hub.COURSE_FOLDER / course_hub.ASSIGNMENTS_FOLDER),
    }


def test_limits_go_into_a_cgroup_where_the_machine_has_cgroup_v2(tmp_path: Path) -> None:
    assert "no cgroup v2" in course_hub.cgroup_limits(123, "jupyter-ana", 4 * 2**30, 2, root=tmp_path)
    (tmp_path / "cgroup.controllers").write_text("cpuset io pids")
    assert "does not offer the memory and cpu" in course_hub.cgroup_limits(123, "jupyter-ana", 4 * 2**30, 2, tmp_path)
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids")
    done = course_hub.cgroup_limits(123, "jupyter-ana", 4 * 2**30, 2, root=tmp_path)
    group = tmp_path / "phi3course-hub" / "jupyter-ana"
    assert done.startswith("limited to 4.0 GiB and 2 CPUs")
    assert (group / "memory.max").read_text() == str(4 * 2**30)
    assert (group / "cpu.max").read_text() == "200000 100000"
    assert (group / "cgroup.procs").read_text() == "123"


def test_the_learners_accounts_must_be_able_to_read_the_environment_and_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    shared = Path(tempfile.mkdtemp(prefix="hub-readable-"))  # under /tmp: every folder above it is passable
    try:
        shared.chmod(0o755)
        (shared / "model").write_text("weights")
        (shared / "model").chmod(0o644)
        assert course_hub.readable_by_all(shared / "model")
        (shared / "model").chmod(0o600)
        assert not course_hub.readable_by_all(shared / "model")
        (shared / "model").chmod(0o644)
        shared.chmod(0o700)  # a folder on the way that others cannot pass (as /root is)
        assert not course_hub.readable_by_all(shared / "model")
    finally:
        shutil.rmtree(shared)
    cache = Path("/srv/phi3course/cache")
    monkeypatch.setattr(course_hub, "readable_by_all", lambda path: path != cache)
    why = course_hub.unreadable_for_learners(cache) or ""
    assert "the model cache" in why and "COURSE_CACHE=/srv/phi3course/cache make warm" in why


LISTEN = (
    "import socket, sys, time\n"
    "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(); print('ready', flush=True)\n"
    "time.sleep(120)"
)


def stand_in_service(port: int, pf_home: Path) -> subprocess.Popen:
    """A process listening on ``port`` with ``pf_home`` as its Prompt flow home, as a learner's service would."""
    env = {**os.environ, "PF_HOME_DIRECTORY": str(pf_home)}
    process = subprocess.Popen([sys.executable, "-c", LISTEN, str(port)], env=env, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


def test_two_learners_prompt_flow_services_never_collide(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from phi3course import flow

    ana, ben = (tmp_path / name / ".promptflow" for name in ("ana", "ben"))
    monkeypatch.setenv("PF_HOME_DIRECTORY", str(ana))
    port_a = flow.claim_pf_service_port()
    # Prompt flow itself reads the port from the file written for this home.
    env = {**os.environ, "PF_HOME_DIRECTORY": str(ana)}
    read = "from promptflow._sdk._service.utils.utils import get_port_from_config as g; print(g('127.0.0.1'))"
    done = subprocess.run([sys.executable, "-c", read], env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == str(port_a), done.stderr[-2000:]
    service_a = stand_in_service(port_a, ana)
    try:
        # Ben's home recorded the same port in an earlier session: his stop never ends Ana's service, and his next
        # client takes another port instead of sending his traces to hers.
        (ben / "pfs").mkdir(parents=True)
        shutil.copy(flow.pf_service_port_file(ana), flow.pf_service_port_file(ben))
        monkeypatch.setenv("PF_HOME_DIRECTORY", str(ben))
        assert flow.pf_service_port() == port_a
        assert flow.stop_pf_service() is False and service_a.poll() is None
        port_b = flow.claim_pf_service_port()
        assert port_b != port_a and flow.pf_service_port() == port_b
        # Ana keeps hers (her own service holds it), and her stop ends it.
        monkeypatch.setenv("PF_HOME_DIRECTORY", str(ana))
        assert flow.claim_pf_service_port() == port_a
        # What serve() checks before it trusts an answer on its port: that its own server gave it.
        other = subprocess.Popen(["sleep", "30"])
        try:
            assert processes.serves(service_a.pid, port_a) and not processes.serves(other.pid, port_a)
        finally:
            other.kill()
            other.wait()
        assert flow.stop_pf_service() is True
        assert service_a.wait(10) is not None
        assert flow.stop_pf_service() is False
    finally:
        if service_a.poll() is None:
            service_a.kill()
            service_a.wait()


def three_free_ports() -> int:
    """A port with the two after it free too (the hub's proxy API and the hub's own API use them)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port < 65000 and all(_free(port + offset) for offset in range(3)):
            return port
    raise RuntimeError("no three consecutive free ports on 127.0.0.1")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class Hub:
    url: str
    password: str
    process: subprocess.Popen
    log: Path
    state: Path
    system_accounts: bool  # one system account per learner; otherwise all servers run as this test's account
    exchange: Path  # nbgrader's exchange (HUB_EXCHANGE_DIR)
    course_repo: str  # the git URL learners pull the course from (HUB_COURSE_REPO)

    def post_login(self, name: str, password: str) -> tuple[requests.Session, requests.Response]:
        """The hub's login form, filled in as a browser does (its _xsrf field included)."""
        session = requests.Session()
        session.get(f"{self.url}/hub/login", timeout=30).raise_for_status()
        form = {"username": name, "password": password, "_xsrf": session.cookies["_xsrf"]}
        return session, session.post(f"{self.url}/hub/login", data=form, timeout=60, allow_redirects=False)

    def login(self, name: str) -> str:
        """Log in through the hub's form, then ask the hub for an API token of this learner."""
        session, answer = self.post_login(name, self.password)
        assert answer.status_code == 302, f"login of {name}: HTTP {answer.status_code}"
        session.get(f"{self.url}/hub/home", timeout=30).raise_for_status()  # a logged-in session's own _xsrf
        xsrf = [cookie.value for cookie in session.cookies if cookie.name == "_xsrf"][-1]
        made = session.post(
            f"{self.url}/hub/api/users/{name}/tokens",
            json={"note": "test_hub", "expires_in": 900},
            headers={"X-XSRFToken": xsrf},
            timeout=30,
        )
        assert made.status_code == 201, made.text
        return made.json()["token"]

    def api(self, method: str, path: str, token: str, **kwargs) -> requests.Response:
        return requests.request(
            method, f"{self.url}{path}", headers={"Authorization": f"token {token}"}, timeout=60, **kwargs
        )

    def spawn(self, name: str, token: str) -> None:
        started = self.api("POST", f"/hub/api/users/{name}/server", token)
        assert started.status_code in (201, 202), started.text

    def wait_ready(self, name: str, token: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            server = self.api("GET", f"/hub/api/users/{name}", token).json()["servers"].get("", {})
            if server.get("ready"):
                return
            time.sleep(1)
        raise AssertionError(f"{name}'s server not ready after {timeout_s:.0f} s; hub log: {self.log}")


def git_pull(hub: Hub, name: str, token: str) -> list[str]:
    """What a learner's click on the shared link does: their server's nbgitpuller pulls the course (its event
    stream, read to the end); returns the phases it reported."""
    query = course_hub.git_pull_path(hub.course_repo).split("?", 1)[1]
    answer = hub.api("GET", f"/user/{name}/git-pull/api?{query}", token, stream=True)
    assert answer.status_code == 200, answer.text
    phases, lines = [], []
    for line in answer.iter_lines(decode_unicode=True):
        if line and line.startswith("data:"):
            event = json.loads(line[5:])
            phases.append(event.get("phase", ""))
            lines.append(str(event.get("output") or event.get("message") or ""))
    assert phases[-1:] == ["finished"], "".join(lines)[-3000:]
    return phases


def execute(hub: Hub, name: str, token: str, code: str, timeout_s: float = 240) -> str:
    """Run ``code`` in a new kernel of ``name``'s server (its REST API and kernel websocket); returns its stdout."""
    where = f"{course_hub.COURSE_FOLDER}/notebooks"  # below the server's root, the learner's home
    kernel = hub.api("POST", f"/user/{name}/api/kernels", token, json={"name": "python3", "path": where})
    assert kernel.status_code == 201, kernel.text
    kernel_id = kernel.json()["id"]
    try:
        return asyncio.run(_execute(hub.url.replace("http", "ws", 1), name, token, kernel_id, code, timeout_s))
    finally:
        hub.api("DELETE", f"/user/{name}/api/kernels/{kernel_id}", token)


async def _execute(ws_url: str, name: str, token: str, kernel_id: str, code: str, timeout_s: float) -> str:
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    request = HTTPRequest(
        f"{ws_url}/user/{name}/api/kernels/{kernel_id}/channels",
        headers={"Authorization": f"token {token}"},
    )
    socket_ = await websocket_connect(request)
    msg_id = uuid.uuid4().hex
    header = {"msg_id": msg_id, "msg_type": "execute_request", "session": uuid.uuid4().hex, "username": name}
    content = {"code": code, "silent": False, "store_history": False, "allow_stdin": False}
    message = {"header": {**header, "version": "5.3", "date": ""}, "parent_header": {}, "metadata": {}}
    socket_.write_message(json.dumps({**message, "channel": "shell", "content": content, "buffers": []}))
    out: list[str] = []
    deadline = time.monotonic() + timeout_s
    while True:
        raw = await asyncio.wait_for(socket_.read_message(), max(1.0, deadline - time.monotonic()))
        assert raw is not None, "the kernel's websocket closed"
        message = json.loads(raw)
        if message.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind = message["msg_type"]
        if kind == "stream":
            out.append(message["content"]["text"])
        elif kind == "error":
            raise AssertionError("\n".join(message["content"]["traceback"]))
        elif kind == "execute_reply":
            socket_.close()
            return "".join(out)


# What each learner's kernel runs: the runner, as a learner would in a terminal, then where things went.
IN_THE_KERNEL = """
import json, os, subprocess, sys
done = subprocess.run([sys.executable, "-m", "phi3course.tools.runner", "--profile", "smoke", "--to", "01"],
                      capture_output=True, text=True)
from phi3course import course
print(json.dumps({"rc": done.returncode, "tail": (done.stdout + done.stderr)[-3000:], "uid": os.getuid(),
                  "home": os.environ["HOME"], "run": str(course.run_dir_for("smoke").path),
                  "pf_home": os.environ["PF_HOME_DIRECTORY"], "cwd": os.getcwd()}))
"""


# What each learner's kernel runs to hand in 01's exercises: nbgrader's fetch and submit, as the learner (their
# server's ~/.jupyter/nbgrader_config.py, written by the hub, names the exchange and their student id). SOLVE puts
# the reference solutions in, as a learner who solved them would have.
HAND_IN = """
import json, os, subprocess, sys
from pathlib import Path
import nbformat
from phi3course import exercises
nbgrader = [sys.executable, "-m", "nbgrader"]
fetched = subprocess.run(nbgrader + ["fetch_assignment", "01_data"], capture_output=True, text=True)
notebook = Path(os.environ["COURSE_ROOT"]) / "assignments" / "01_data" / "01_data.ipynb"
if SOLVE and fetched.returncode == 0:
    ours = Path(os.environ["COURSE_ROOT"]) / "notebooks" / "01_data.ipynb"
    solved = exercises.apply(nbformat.read(notebook, as_version=4),
                             exercises.load_solutions(exercises.solutions_path(ours)), ours)
    nbformat.write(solved, notebook)
submitted = subprocess.run(nbgrader + ["submit", "01_data"], capture_output=True, text=True,
                           cwd=notebook.parent.parent)
print(json.dumps({"rc": [fetched.returncode, submitted.returncode], "fetched": notebook.is_file(),
                  "tail": (fetched.stdout + fetched.stderr + submitted.stdout + submitted.stderr)[-3000:]}))
"""


def educator_nbgrader(course: Path, *args: str, **env: str) -> str:
    """``nbgrader <args>`` in the educator's course folder, from the course's environment (as docs/workshop.md)."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    done = subprocess.run(
        [sys.executable, "-m", "nbgrader", *args], cwd=course, env={**os.environ, "PATH": path, **env},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


class Sizing:
    """Each learner's peak memory (resident, all their processes together) and CPU seconds, sampled every 0.5 s:
    their processes are those of their account, or (one-account mode) those whose HOME is their home."""

    def __init__(self, owners: dict[str, object]) -> None:
        import threading

        self.owners = owners  # learner -> account name (str) or home (Path)
        self.peak = dict.fromkeys(owners, 0)
        self.cpu: dict[str, dict[int, float]] = {name: {} for name in owners}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _owner(self, proc: psutil.Process) -> str | None:
        try:
            user, home = proc.username(), None
            for name, owner in self.owners.items():
                if isinstance(owner, str) and user == owner:
                    return name
                if isinstance(owner, Path):
                    home = home or proc.environ().get("HOME", "")
                    if home == str(owner):
                        return name
        except psutil.Error:
            return None
        return None

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = dict.fromkeys(self.owners, 0)
            for proc in psutil.process_iter():
                name = self._owner(proc)
                if name is None:
                    continue
                try:
                    with proc.oneshot():
                        rss[name] += proc.memory_info().rss
                        times = proc.cpu_times()
                        self.cpu[name][proc.pid] = times.user + times.system
                except psutil.Error:
                    continue
            for name, used in rss.items():
                self.peak[name] = max(self.peak[name], used)
            self._stop.wait(0.5)

    def stop(self) -> dict[str, dict[str, float]]:
        self._stop.set()
        self._thread.join(10)
        return {
            name: {
                "peak_rss_mib": round(self.peak[name] / 2**20),
                "cpu_seconds": round(sum(self.cpu[name].values()), 1),
            }
            for name in self.owners
        }


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[Hub, list[str]]]:
    if missing := _missing():
        if os.environ.get("COURSE_REQUIRE_HUB") == "1":
            pytest.fail(f"COURSE_REQUIRE_HUB=1, but {missing}")
        pytest.skip(missing)
    learners = [f"ana{secrets.token_hex(2)}", f"ben{secrets.token_hex(2)}"]
    port = three_free_ports()
    state = tmp_path / "state"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HUB_", "PF_", "COURSE_"))}
    cache = None
    exchange = Path(tempfile.mkdtemp(prefix="hub-exchange-"))  # learners' own accounts reach it (not under tmp_path)
    # The course as an educator publishes it: a git repository (here a bare one of this checkout's commit), which
    # each learner's server pulls with nbgitpuller.
    published = Path(tempfile.mkdtemp(prefix="hub-course-"))
    repo = published / "phi3-course.git"
    subprocess.run(["git", "init", "--quiet", "--bare", "--initial-branch=main", str(repo)], check=True)
    subprocess.run(["git", "-C", str(course_root()), "push", "--quiet", str(repo), "HEAD:refs/heads/main"], check=True)
    for path in (published, *published.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    if ROOT:  # the learners' accounts read a copy of the smoke model that every account can read
        cache = Path(tempfile.mkdtemp(prefix="hub-cache-"))
        shutil.copytree(cache_dir() / "phi-3-tiny", cache / "phi-3-tiny")
        for path in (cache, *cache.rglob("*")):
            path.chmod(0o755 if path.is_dir() else 0o644)
    # As root, accounts of their own, unless they could not run this environment (a .venv under /root): then, and
    # when not root, one-account mode.
    system = ROOT and course_hub.unreadable_for_learners(cache) is None
    print(f"hub test: {'one system account per learner' if system else 'one-account mode'}")
    password = secrets.token_urlsafe(12)
    env.update(
        HUB_PORT=str(port),
        HUB_STATE_DIR=str(state),
        HUB_WORKSHOP_PASSWORD=password,
        HUB_ADMIN_PASSWORD=secrets.token_urlsafe(32),
        HUB_LEARNERS=" ".join(learners),
        HUB_CULL_IDLE_S="600",
        HUB_ACCOUNTS="system" if system else "one",
        HUB_EXCHANGE_DIR=str(exchange),
        HUB_COURSE_REPO=repo.as_uri(),
        COURSE_CACHE=str(cache or cache_dir()),
        HF_HUB_OFFLINE="1",
    )
    log = tmp_path / "hub.log"
    with log.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(HUB_DIR / "jupyterhub_config.py")],
            cwd=tmp_path, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    running = Hub(f"http://127.0.0.1:{port}", password, process, log, state, system, exchange, repo.as_uri())
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"the hub exited: {log.read_text()[-3000:]}"
            try:
                if requests.get(f"{running.url}/hub/api/", timeout=5).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, f"the hub did not answer in 60 s: {log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield running, learners
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        if system:
            for name in learners:
                account = course_hub.ACCOUNT_PREFIX + name
                for proc in psutil.process_iter(["username"]):
                    if proc.info["username"] == account:
                        proc.kill()
                subprocess.run(["userdel", "--remove", account], capture_output=True)
        if cache:
            shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(exchange, ignore_errors=True)
        shutil.rmtree(published, ignore_errors=True)


def processes_of(state: Path, accounts: set[str]) -> list[str]:
    """What still runs of this hub: its proxy, services and servers (by its state folder or port), or as a learner."""
    left = []
    for proc in psutil.process_iter(["pid", "username", "cmdline", "environ"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            environ = proc.info["environ"] or {}
        except (psutil.Error, TypeError):
            continue
        if (
            proc.info["username"] in accounts
            or str(state) in cmdline
            or environ.get("HUB_STATE_DIR") == str(state)
            or str(state) in environ.get("HOME", "")
        ):
            left.append(f"{proc.info['pid']} {proc.info['username']}: {cmdline[:200]}")
    return left


def test_two_learners_run_the_course_in_their_own_servers_through_the_hub(hub: tuple[Hub, list[str]]) -> None:
    from urllib.parse import parse_qs

    running, learners = hub
    tokens = {name: running.login(name) for name in learners}
    _, wrong = running.post_login(learners[0], "not-the-workshop-password")
    assert wrong.status_code == 403 and "Invalid username or password" in wrong.text
    for name in learners:  # both servers start at once
        running.spawn(name, tokens[name])
    for name in learners:
        running.wait_ready(name, tokens[name])
        # The server opens on the course's pull link, which then opens its notebooks in JupyterLab.
        opened = running.api("GET", f"/user/{name}/", tokens[name], allow_redirects=False)
        where, _, query = opened.headers["Location"].partition("?")
        expected = course_hub.git_pull_path(running.course_repo).split("?")[1]
        assert where == f"/user/{name}/git-pull" and parse_qs(query) == parse_qs(expected), opened.headers["Location"]
        git_pull(running, name, tokens[name])

    owners: dict[str, object] = {
        name: course_hub.ACCOUNT_PREFIX + name if running.system_accounts else running.state / "homes" / name
        for name in learners
    }
    sizing, started = Sizing(owners), time.monotonic()
    with ThreadPoolExecutor(len(learners)) as pool:  # both learners at once, as in a class
        outputs = list(pool.map(lambda name: execute(running, name, tokens[name], IN_THE_KERNEL), learners))
    measured, wall = sizing.stop(), time.monotonic() - started
    seen = {name: json.loads(out.strip().splitlines()[-1]) for name, out in zip(learners, outputs, strict=True)}
    for name, facts in seen.items():
        assert facts["rc"] == 0, f"{name}'s run failed:\n{facts['tail']}"
        home = Path(facts["home"])
        assert Path(facts["run"]) == home / course_hub.COURSE_FOLDER / "runs" / "smoke"
        assert Path(facts["pf_home"]) == home / ".promptflow"
        assert Path(facts["cwd"]) == home / course_hub.COURSE_FOLDER / "notebooks"  # the kernel runs in the pull
        assert (home / course_hub.COURSE_FOLDER / ".git").is_dir(), "the course came by nbgitpuller, a clone"
        summary = json.loads((Path(facts["run"]) / "summary.json").read_text())
        assert [stage for stage in summary["stages"]][:2] == ["00_setup", "01_data"], summary["stages"]
        if running.system_accounts:
            account = pwd.getpwnam(course_hub.ACCOUNT_PREFIX + name)
            assert facts["uid"] == account.pw_uid and home == Path(account.pw_dir)
            assert (Path(facts["run"]) / "summary.json").stat().st_uid == account.pw_uid
            assert home.stat().st_mode & 0o077 == 0, "a learner's home is theirs alone"
        else:
            assert home == running.state / "homes" / name
    first, second = (seen[name] for name in learners)
    assert first["home"] != second["home"] and first["run"] != second["run"] and first["pf_home"] != second["pf_home"]
    if running.system_accounts:
        assert first["uid"] != second["uid"]
    for name, figures in measured.items():  # the sampler saw each learner's server, kernel and run
        assert figures["peak_rss_mib"] > 200 and figures["cpu_seconds"] > 1, (name, measured)
    if record := os.environ.get("HUB_SIZING_RECORD"):
        write_sizing_record(Path(record), measured, wall, running.system_accounts)

    # The class's grading: release 01's exercises, each learner hands them in from their own server, collect, grade.
    from phi3course import exercises
    from phi3course.paths import course_notebooks
    from phi3course.tools import classroom

    course = running.state.parent / "grading"
    exercises.nbgrader_course([next(p for p in course_notebooks() if p.stem == "01_data")], course)
    exchange = f"--Exchange.root={running.exchange}"
    educator_nbgrader(course, "generate_assignment", "01_data", "--force")
    educator_nbgrader(course, "release_assignment", "01_data", exchange)
    solved, untouched = learners
    for name in learners:
        code = HAND_IN.replace("SOLVE", str(name == solved), 1)
        handed = json.loads(execute(running, name, tokens[name], code).strip().splitlines()[-1])
        assert handed["rc"] == [0, 0] and handed["fetched"], f"{name} could not hand in 01:\n{handed['tail']}"
    educator_nbgrader(course, "collect", "01_data", exchange)
    assert sorted(path.name for path in (course / "submitted").iterdir()) == sorted(learners)
    grading = {
        exercises.MODE_ENV: "grade",  # a check that does not pass raises: 0 points
        "COURSE_PROFILE": "smoke",
        "COURSE_RUN_DIR": str(running.state.parent / "grading-run"),
        "COURSE_CACHE": str(cache_dir()),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(course_root() / "lib"), os.environ.get("PYTHONPATH")])),
    }
    educator_nbgrader(course, "autograde", "01_data", "--force", **grading)
    homes = [Path(seen[name]["run"]) for name in learners]
    table = classroom.collect(homes, since=None, gradebook=course / "gradebook.db")
    account = course_hub.ACCOUNT_PREFIX if running.system_accounts else ""
    assert table.loc[account + solved, "grade"] == "3/3 (01_data 3/3)", table.to_string()
    assert table.loc[account + untouched, "grade"] == "0/3 (01_data 0/3)", table.to_string()
    assert all(table["notebooks ok"].str.startswith("2/")), table.to_string()  # 00 and 01 ran, for both

    for name in learners:
        stopped = running.api("DELETE", f"/hub/api/users/{name}/server", tokens[name])
        assert stopped.status_code in (202, 204), stopped.text
    running.process.send_signal(signal.SIGTERM)
    assert running.process.wait(60) == 0, running.log.read_text()[-3000:]
    accounts = {course_hub.ACCOUNT_PREFIX + name for name in learners} if running.system_accounts else set()
    deadline = time.monotonic() + 20
    while (left := processes_of(running.state, accounts)) and time.monotonic() < deadline:
        time.sleep(1)
    assert left == [], f"still running after the hub stopped: {left}"


def write_sizing_record(path: Path, measured: dict[str, dict[str, float]], wall: float, system: bool) -> None:
    """The figures as a ``sizing`` record for docs/measurements/ (benchmarks/measurements.py renders its table)."""
    from datetime import date

    sys.path.insert(0, str(course_root()))
    from benchmarks.measurements import check_record, detect_cpu_class

    record = {
        "measurement": {
            "kind": "sizing",
            "cpu_class": detect_cpu_class(),
            "date": date.today().isoformat(),
            "command": "HUB_SIZING_RECORD=<record> make test-hub",
            "what": "two learners running 00 and 01 (smoke) at once, each in their own server through the hub",
            "conditions": (
                f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, no GPU; not idle (other "
                "work ran on the machine at the same time); "
                f"{'one account per learner' if system else 'one-account mode'}; no memory/CPU limit held (no "
                "cgroup v2 here); each learner's processes sampled every 0.5 s with psutil"
            ),
        },
        "learners": [{"learner": f"learner {i + 1}", **figures} for i, figures in enumerate(measured.values())],
        "wall_seconds": round(wall, 1),
    }
    check_record(path.name, record)
    path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


# --- when a class outgrows one machine: Zero to JupyterHub on AKS ------------------------------------------------
KUBERNETES = HUB_DIR / "kubernetes"
# The keys the `jupyterhub` chart (4.4.0) accepts where the course's values set any: its values.schema.yaml refuses
# every other key in these places (additionalProperties: false).
CHART_KEYS = {
    "": {
        "enabled", "fullnameOverride", "nameOverride", "cull", "custom", "imagePullSecret", "imagePullSecrets",
        "hub", "rbac", "proxy", "singleuser", "scheduling", "ingress", "httpRoute", "prePuller", "debug", "global",
    },
    "singleuser": {
        "podNameTemplate", "cpu", "memory", "image", "initContainers", "profileList", "extraFiles", "extraEnv",
        "nodeSelector", "extraTolerations", "extraNodeAffinity", "extraPodAffinity", "extraPodAntiAffinity",
        "cloudMetadata", "cmd", "defaultUrl", "events", "extraAnnotations", "extraContainers", "extraLabels",
        "extraPodConfig", "extraResource", "fsGid", "lifecycleHooks", "networkPolicy", "networkTools",
        "serviceAccountName", "startTimeout", "storage", "allowPrivilegeEscalation", "uid",
    },
    "singleuser.cpu": {"limit", "guarantee"},
    "singleuser.memory": {"limit", "guarantee"},
    "cull": {"enabled", "users", "adminUsers", "removeNamedServers", "timeout", "every", "concurrency", "maxAge"},
}  # fmt: skip


def z2jh_values() -> dict:
    import yaml

    return yaml.safe_load((KUBERNETES / "z2jh-values.yaml").read_text(encoding="utf-8"))


def keys_of(tree: object) -> list[str]:
    """Every key in nested mappings."""
    if not isinstance(tree, dict):
        return []
    return [key for key, value in tree.items() for key in (key, *keys_of(value))]


def test_the_helm_values_use_only_keys_the_chart_accepts() -> None:
    values = z2jh_values()
    for path, allowed in CHART_KEYS.items():
        section = values
        for part in filter(None, path.split(".")):
            section = section[part]
        assert set(section) <= allowed, f"{path or 'top level'}: {sorted(set(section) - allowed)}"


def test_each_learner_on_kubernetes_gets_what_one_machine_gives_them() -> None:
    values, one_machine = z2jh_values(), settings()
    learner = values["singleuser"]
    # Sized as on one machine: guaranteed, so that a node never takes more learners than it can run.
    assert learner["cpu"] == {"guarantee": one_machine.cpu_limit, "limit": one_machine.cpu_limit}
    assert learner["memory"] == {"guarantee": one_machine.mem_limit, "limit": one_machine.mem_limit}
    env = learner["extraEnv"]
    home = Path("/home/jovyan")
    assert env["COURSE_ROOT"] == str(home / course_hub.COURSE_FOLDER)
    assert env["PF_HOME_DIRECTORY"] == str(home / ".promptflow")
    assert env["COURSE_ROOT"] in " ".join(learner["lifecycleHooks"]["postStart"]["exec"]["command"])
    assert learner["defaultUrl"] == f"/lab/tree/{course_hub.COURSE_FOLDER}/notebooks"
    assert values["cull"]["enabled"] and values["cull"]["timeout"] == one_machine.cull_idle_s
    # The institution's Entra ID signs learners in; its secret is never in this file.
    assert values["hub"]["config"]["JupyterHub"]["authenticator_class"] == "azuread"
    assert not any("secret" in key.lower() for key in keys_of(values["hub"]["config"]))
    assert values["proxy"]["https"]["enabled"]


def test_the_learners_image_installs_the_course_from_its_one_dependency_list() -> None:
    import tomllib

    dockerfile = (KUBERNETES / "singleuser.Dockerfile").read_text(encoding="utf-8")
    project = tomllib.loads((course_root() / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    python = re.search(r"^FROM python:(\d+\.\d+)", dockerfile, re.M)
    assert python and f">={python.group(1)}" in project["requires-python"]
    assert "make setup" in dockerfile and "make warm" in dockerfile
    installs = re.findall(r"pip install ([^\n&\\]+)", dockerfile)
    named = [word for line in installs for word in line.split() if not word.startswith("-")]
    extras = {extra for word in named for extra in re.findall(r"\.\[([\w,]+)\]", word)[0].split(",")}
    assert named and all(word.startswith("'.[") for word in named), f"packages named outside pyproject: {named}"
    assert extras <= set(project["optional-dependencies"])
    assert z2jh_values()["singleuser"]["image"]["name"].endswith("/phi3course-singleuser")
