"""The course's JupyterHub for one machine: its settings, read from the environment, and the spawner that gives each
learner their own account, home, course copy, run folder and Prompt flow home.

`jupyterhub_config.py` beside this file wires it into JupyterHub; `make hub` starts it. Learners' servers run as
one system account each (``jupyter-<name>``, created on their first login, as The Littlest JupyterHub does) when the
hub runs as root; otherwise every server runs as the hub's own account, each in its own home under the hub's state
folder (one-account mode: no isolation between learners, so only on 127.0.0.1, for trying the hub out).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import pwd
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HUB_DIR = Path(__file__).resolve().parent
COURSE_DIR = HUB_DIR.parent  # the checkout each learner's copy is made from
COURSE_FOLDER = "phi3-course"  # each learner's copy, in their home (make collect RUNS="/home/*/phi3-course/runs/local")
ACCOUNT_PREFIX = "jupyter-"
USERNAME_PATTERN = r"^[a-z][a-z0-9_-]{0,23}$"  # fits a system account name once prefixed
# What a learner's copy leaves out: the educator's runs, environment and facts, the hub's own state (paths from the
# checkout's root), and caches wherever they are.
NOT_COPIED = {".git", ".venv", "runs", "my_facts", ".env", "hub/state", "hub/node_modules"}
NOT_COPIED_ANYWHERE = {"__pycache__", ".pytest_cache", ".ruff_cache", ".ipynb_checkpoints"}
USER_PASSWORD_MIN = 8  # SharedPasswordAuthenticator's own minimums
ADMIN_PASSWORD_MIN = 32
DEFAULT_EXCHANGE = Path("/srv/nbgrader/exchange")  # nbgrader's own default
DEFAULT_COURSE_ID = "phi3-course"  # what `python -m phi3course.exercises nbgrader` writes
ASSIGNMENTS_FOLDER = "assignments"  # in the learner's course copy: what nbgrader fetches lands here


class HubSettingError(ValueError):
    """A hub setting that cannot work; the message names the variable to change."""


def _secret(env: dict[str, str], name: str) -> str | None:
    """``NAME`` itself or the first line of the file ``NAME_FILE`` names (a secret never sits in git)."""
    if value := env.get(name):
        return value
    if path := env.get(f"{name}_FILE"):
        try:
            return Path(path).expanduser().read_text(encoding="utf-8").splitlines()[0].strip()
        except (OSError, IndexError) as error:
            raise HubSettingError(f"{name}_FILE={path} cannot be read ({error}): write the password into it") from error
    return None


@dataclass(frozen=True)
class HubSettings:
    """Everything `make hub` lets an educator set, from ``HUB_*`` variables (docs/workshop.md lists them)."""

    ip: str
    port: int
    ssl_cert: str | None
    ssl_key: str | None
    state_dir: Path
    workshop_password: str
    admin: str
    admin_password: str | None
    learners: tuple[str, ...]
    course_cache: Path
    mem_limit: str
    cpu_limit: float
    cull_idle_s: int
    system_accounts: bool
    exchange_dir: Path
    course_id: str
    course_repo: str | None
    course_branch: str

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, is_root: bool | None = None) -> HubSettings:
        env = dict(os.environ if env is None else env)
        is_root = os.geteuid() == 0 if is_root is None else is_root
        ip = env.get("HUB_IP", "127.0.0.1")
        try:
            loopback = ipaddress.ip_address(ip).is_loopback
        except ValueError:
            loopback = ip == "localhost"
        cert, key = env.get("HUB_SSL_CERT"), env.get("HUB_SSL_KEY")
        if not loopback and not (cert and key):
            raise HubSettingError(
                f"HUB_IP={ip} lets other machines reach the hub, and the workshop password would cross the network "
                "in clear text: set HUB_SSL_CERT and HUB_SSL_KEY to a TLS certificate and its key (or leave HUB_IP "
                "unset to stay on 127.0.0.1)"
            )
        accounts = env.get("HUB_ACCOUNTS", "system" if is_root else "one")
        if accounts not in ("system", "one"):
            raise HubSettingError(f"HUB_ACCOUNTS={accounts}: use system (one account per learner) or one")
        if accounts == "system" and not is_root:
            raise HubSettingError("HUB_ACCOUNTS=system creates an account per learner, which needs root")
        if not loopback and accounts != "system":
            raise HubSettingError(
                f"HUB_IP={ip}: a hub other machines reach must give each learner an account of their own (run it "
                "as root, HUB_ACCOUNTS=system); in one-account mode every learner's server runs as one account"
            )
        password = _secret(env, "HUB_WORKSHOP_PASSWORD")
        if not password or len(password) < USER_PASSWORD_MIN:
            raise HubSettingError(
                f"the workshop password (HUB_WORKSHOP_PASSWORD, or a file named by HUB_WORKSHOP_PASSWORD_FILE) must "
                f"have at least {USER_PASSWORD_MIN} characters; `make hub` writes a random one into hub/state/ "
                "when neither is set"
            )
        admin_password = _secret(env, "HUB_ADMIN_PASSWORD")
        if admin_password is not None and (len(admin_password) < ADMIN_PASSWORD_MIN or admin_password == password):
            raise HubSettingError(
                f"HUB_ADMIN_PASSWORD must have at least {ADMIN_PASSWORD_MIN} characters and differ from the "
                "workshop password"
            )
        state_dir = Path(env.get("HUB_STATE_DIR", HUB_DIR / "state")).expanduser().resolve()
        cache = Path(env.get("COURSE_CACHE") or Path(env.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "phi3course")
        try:
            port, cull = int(env.get("HUB_PORT", "8000")), int(env.get("HUB_CULL_IDLE_S", "3600"))
            cpu = float(env.get("HUB_CPU_LIMIT", "2"))
        except ValueError as error:
            raise HubSettingError(f"HUB_PORT, HUB_CULL_IDLE_S and HUB_CPU_LIMIT are numbers ({error})") from error
        system = accounts == "system"
        # nbgrader's exchange: where released exercises wait and submissions arrive. Learners' own accounts must
        # reach it, so it is never under the hub's private state folder when they have accounts of their own.
        exchange = Path(env.get("HUB_EXCHANGE_DIR") or (DEFAULT_EXCHANGE if system else state_dir / "exchange"))
        course_id = env.get("HUB_COURSE_ID", DEFAULT_COURSE_ID)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", course_id):
            raise HubSettingError(f"HUB_COURSE_ID={course_id}: use letters, digits, '.', '_' or '-' (nbgrader's ids)")
        return cls(
            ip=ip,
            port=port,
            ssl_cert=cert,
            ssl_key=key,
            state_dir=state_dir,
            workshop_password=password,
            admin=env.get("HUB_ADMIN", "educator"),
            admin_password=admin_password,
            learners=tuple(env.get("HUB_LEARNERS", "").split()),
            course_cache=cache.expanduser().resolve(),
            mem_limit=env.get("HUB_MEM_LIMIT", "4G"),
            cpu_limit=cpu,
            cull_idle_s=cull,
            system_accounts=system,
            exchange_dir=exchange.expanduser().resolve(),
            course_id=course_id,
            course_repo=env.get("HUB_COURSE_REPO") or None,
            course_branch=env.get("HUB_COURSE_BRANCH", "main"),
        )


def git_pull_path(repo: str, branch: str = "main", folder: str = COURSE_FOLDER) -> str:
    """The part of an nbgitpuller link after the server's address: pull ``repo`` into ``~/<folder>`` (a clone the
    first time; later, a merge that keeps the learner's edits) and open its notebooks in JupyterLab."""
    from urllib.parse import urlencode

    query = urlencode({"repo": repo, "branch": branch, "targetpath": folder, "urlpath": f"lab/tree/{folder}/notebooks"})
    return f"git-pull?{query}"


def git_pull_link(hub_url: str, repo: str, branch: str = "main", folder: str = COURSE_FOLDER) -> str:
    """The link an educator shares: through the hub's login, each learner's own server pulls the course."""
    return f"{hub_url.rstrip('/')}/hub/user-redirect/{git_pull_path(repo, branch, folder)}"


def readable_by_all(path: Path) -> bool:
    """Whether an account other than its owner can read ``path`` (every folder above it passable)."""
    path = path.resolve()
    if not path.exists() or not os.stat(path).st_mode & 0o004:
        return False
    return all(os.stat(folder).st_mode & 0o001 for folder in path.parents)


def unreadable_for_learners(cache: Path) -> str | None:
    """Why learners' own accounts could not run the course from here, or None: they need the environment's
    interpreter and packages, the checkout their copy comes from, and the model cache."""
    import sysconfig

    needed = {
        "the course's Python": Path(sys.executable),
        "its packages": Path(sysconfig.get_paths()["purelib"]),
        "the model cache": cache,
    }
    for what, path in needed.items():
        if not readable_by_all(path):
            return (
                f"The learners' accounts cannot read {what}, {path.resolve()}: every folder on its way must be "
                "readable by all (a checkout and .venv under /root are not; clone the course into /srv or /opt, "
                "and fill a cache they can read: COURSE_CACHE=/srv/phi3course/cache make warm, then start the hub "
                "with the same COURSE_CACHE)."
            )
    return None


def copy_course(source: Path, dest: Path) -> bool:
    """The learner's own course copy, made once: a learner's edits are never overwritten. Returns whether it copied."""
    if dest.exists():
        return False

    def left_out(folder: str, names: list[str]) -> set[str]:
        here = Path(folder).relative_to(source)
        return {
            name
            for name in names
            if (here / name).as_posix() in NOT_COPIED or name in NOT_COPIED_ANYWHERE or name.endswith(".egg-info")
        }

    shutil.copytree(source, dest, ignore=left_out, symlinks=True)
    return True


CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PARENT = "phi3course-hub"  # one group per learner's account below it


def cgroup_limits(pid: int, name: str, mem_bytes: int, cpus: float, root: Path = CGROUP_ROOT) -> str:
    """Put ``pid`` (and so every kernel it starts) into a cgroup v2 group capped at ``mem_bytes`` and ``cpus``.

    Returns what was done, or why nothing could be (no cgroup v2, not root, controllers not delegated): the hub logs
    it, so an educator knows whether the limits hold.
    """
    controllers = root / "cgroup.controllers"
    if not controllers.exists():
        return "no memory/CPU limit: this machine has no cgroup v2 (/sys/fs/cgroup/cgroup.controllers)"
    if not {"memory", "cpu"} <= set(controllers.read_text().split()):
        return "no memory/CPU limit: cgroup v2 here does not offer the memory and cpu controllers"
    try:
        parent = root / CGROUP_PARENT
        parent.mkdir(exist_ok=True)
        (root / "cgroup.subtree_control").write_text("+memory +cpu")
        (parent / "cgroup.subtree_control").write_text("+memory +cpu")
        group = parent / name
        group.mkdir(exist_ok=True)
        (group / "memory.max").write_text(str(mem_bytes))
        (group / "cpu.max").write_text(f"{int(cpus * 100_000)} 100000")
        (group / "cgroup.procs").write_text(str(pid))
    except OSError as error:
        return f"no memory/CPU limit: the cgroup could not be set up ({error})"
    return f"limited to {mem_bytes / 2**30:.1f} GiB and {cpus:g} CPUs (cgroup {group})"


def learner_env(home: Path, cache: Path) -> dict[str, str]:
    """What makes a learner's runs their own: the course copy (so ``runs/<profile>``), the Prompt flow home (its
    connections and its local service's port file) and the shared, read-only model cache."""
    return {
        "HOME": str(home),
        "COURSE_ROOT": str(home / COURSE_FOLDER),
        "PF_HOME_DIRECTORY": str(home / ".promptflow"),
        "COURSE_CACHE": str(cache),
    }


NBGRADER_LEARNER_CONFIG = """# Written by the course's hub at every start of this server; edits here are replaced.
c = get_config()  # noqa: F821 (nbgrader provides it)
c.CourseDirectory.course_id = {course_id!r}
c.CourseDirectory.student_id = {student!r}  # the hub's name for this learner, whatever account the server runs as
c.Exchange.root = {exchange!r}
c.Exchange.assignment_dir = {assignments!r}
"""


def nbgrader_learner_config(home: Path, course_id: str, exchange: Path, student: str) -> Path:
    """Write the learner's ``~/.jupyter/nbgrader_config.py``: ``nbgrader fetch_assignment``/``submit`` in their
    server then find the class's exchange, and their submissions carry their hub name (in one-account mode every
    server runs as one account, whose name would otherwise be every learner's)."""
    folder = home / ".jupyter"
    folder.mkdir(mode=0o700, exist_ok=True)
    config = folder / "nbgrader_config.py"
    assignments = home / COURSE_FOLDER / ASSIGNMENTS_FOLDER
    text = NBGRADER_LEARNER_CONFIG.format(
        course_id=course_id, student=student, exchange=str(exchange), assignments=str(assignments)
    )
    config.write_text(text, encoding="utf-8")
    return config


def prepare_exchange(exchange: Path) -> None:
    """nbgrader's exchange folder, writable by every learner (sticky: none can remove another's submission)."""
    exchange.mkdir(parents=True, exist_ok=True)
    exchange.chmod(0o1777)


def create_account(account: str) -> pwd.struct_passwd:
    """The learner's system account with a private home (what The Littlest JupyterHub does on first login)."""
    try:
        return pwd.getpwnam(account)
    except KeyError:
        pass
    subprocess.run(
        ["useradd", "--create-home", "--shell", "/bin/bash", "--comment", "phi3course learner", account],
        check=True,
        capture_output=True,
        text=True,
    )
    entry = pwd.getpwnam(account)
    os.chmod(entry.pw_dir, 0o700)
    return entry


def chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid, follow_symlinks=False)
    for folder, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            os.chown(Path(folder) / name, uid, gid, follow_symlinks=False)


def spawner_class() -> type:
    """The spawner, built here so that importing this module needs no JupyterHub (the unit tests import it)."""
    from jupyterhub.spawner import LocalProcessSpawner, set_user_setuid
    from jupyterhub.utils import maybe_future
    from traitlets import Bool, Unicode

    class CourseSpawner(LocalProcessSpawner):
        """One learner's server: their own account (as root) or home (one-account mode), course copy and run folder,
        in the course's environment, opening JupyterLab on the notebooks."""

        system_accounts = Bool(True, config=True, help="one system account per learner (needs root)")
        state_dir = Unicode(config=True, help="the hub's state folder (one-account mode keeps homes in it)")
        course_cache = Unicode(config=True, help="COURSE_CACHE for every learner: the models, read-only")
        exchange_dir = Unicode(config=True, help="nbgrader's exchange, where exercises are released and submitted")
        course_repo = Unicode("", config=True, help="a git URL: learners pull the course with nbgitpuller")
        course_branch = Unicode("main", config=True, help="the branch of course_repo")
        course_id = Unicode(DEFAULT_COURSE_ID, config=True, help="the nbgrader course id")

        @property
        def account(self) -> str:
            return ACCOUNT_PREFIX + self.user.name if self.system_accounts else pwd.getpwuid(os.getuid()).pw_name

        def _home(self) -> Path:
            if self.system_accounts:
                return Path(pwd.getpwnam(self.account).pw_dir)
            return Path(self.state_dir) / "homes" / self.user.name

        def _prepare(self) -> Path:
            if self.system_accounts:
                entry = create_account(self.account)
                home = Path(entry.pw_dir)
            else:
                home = self._home()
                home.mkdir(parents=True, exist_ok=True, mode=0o700)
            # With a course repository, nbgitpuller clones it when the learner's server first opens; else a copy.
            if not self.course_repo and copy_course(COURSE_DIR, home / COURSE_FOLDER):
                self.log.info("%s: course copied into %s", self.user.name, home / COURSE_FOLDER)
                if self.system_accounts:
                    chown_tree(home / COURSE_FOLDER, entry.pw_uid, entry.pw_gid)
            config = nbgrader_learner_config(home, self.course_id, Path(self.exchange_dir), self.user.name)
            if self.system_accounts:
                chown_tree(config.parent, entry.pw_uid, entry.pw_gid)
            return home

        async def start(self):  # type: ignore[override]
            import asyncio

            home = await asyncio.to_thread(self._prepare)
            if self.course_repo:  # the server opens on the pull link: the course lands in ~/phi3-course
                self.notebook_dir = str(home)
                self.default_url = "/" + git_pull_path(self.course_repo, self.course_branch)
            else:
                self.notebook_dir = str(home / COURSE_FOLDER)
            url = await maybe_future(super().start())
            if self.mem_limit and self.cpu_limit:
                done = cgroup_limits(self.pid, self.account, int(self.mem_limit), float(self.cpu_limit))
                self.log.info("%s: %s", self.user.name, done)
            return url

        async def stop(self, now=False):  # type: ignore[override]
            await maybe_future(super().stop(now=now))
            with contextlib.suppress(OSError):  # the learner's cgroup, empty once their server stopped
                (CGROUP_ROOT / CGROUP_PARENT / self.account).rmdir()

        def make_preexec_fn(self, name):  # type: ignore[override]
            if self.system_accounts:
                return set_user_setuid(self.account)
            home = str(self._home())
            return lambda: os.chdir(home)

        def user_env(self, env):  # type: ignore[override]
            env.update(learner_env(self._home(), Path(self.course_cache)))
            env["USER"] = self.account
            env["SHELL"] = "/bin/bash"
            return env

    return CourseSpawner


def proxy_command() -> str:
    """configurable-http-proxy as `make hub` installs it (hub/node_modules), else one on PATH."""
    local = HUB_DIR / "node_modules" / ".bin" / "configurable-http-proxy"
    if local.exists():
        return str(local)
    if found := shutil.which("configurable-http-proxy"):
        return found
    raise HubSettingError("configurable-http-proxy is not installed: run `make hub` (it installs it with npm)")


def singleuser_command() -> list[str]:
    """The learner's server in the hub's own environment (the course's .venv): its kernel imports the course."""
    return [sys.executable, "-m", "jupyterhub.singleuser"]


def main(argv: list[str] | None = None) -> int:
    """``python hub/course_hub.py link --hub URL --repo GIT_URL [--branch main]``: print the link to share."""
    import argparse

    parser = argparse.ArgumentParser(prog="python hub/course_hub.py", description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    link = commands.add_parser("link", help="the nbgitpuller link that gives each learner the course")
    link.add_argument("--hub", required=True, help="the hub's address, e.g. https://hub.example.org")
    link.add_argument("--repo", required=True, help="the course's git URL, as every learner's server can reach it")
    link.add_argument("--branch", default="main")
    args = parser.parse_args(argv)
    print(git_pull_link(args.hub, args.repo, args.branch))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
