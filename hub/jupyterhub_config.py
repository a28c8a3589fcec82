# The course's JupyterHub for one machine (`make hub`; docs/workshop.md, "A JupyterHub on one machine").
# Every setting comes from a HUB_* variable, read and checked in course_hub.py; nothing secret is in this file.
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from course_hub import (
    USERNAME_PATTERN,
    HubSettings,
    prepare_exchange,
    proxy_command,
    singleuser_command,
    spawner_class,
    unreadable_for_learners,
)

c = get_config()  # type: ignore[name-defined]  # noqa: F821
hub = HubSettings.from_env()
hub.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

# Where it listens: 127.0.0.1 unless HUB_IP says otherwise, and then only with TLS (checked in HubSettings).
c.JupyterHub.ip = hub.ip
c.JupyterHub.port = hub.port
c.JupyterHub.hub_ip = "127.0.0.1"
if hub.ssl_cert:
    c.JupyterHub.ssl_cert = hub.ssl_cert
    c.JupyterHub.ssl_key = hub.ssl_key
c.JupyterHub.db_url = f"sqlite:///{hub.state_dir / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(hub.state_dir / "jupyterhub_cookie_secret")
c.ConfigurableHTTPProxy.command = [proxy_command()]
c.ConfigurableHTTPProxy.pid_file = str(hub.state_dir / "proxy.pid")
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{hub.port + 1}"  # the two ports after the public one
c.JupyterHub.hub_port = hub.port + 2

# Who gets in: the workshop password for learners, a separate (longer) one for the educator, who is the admin.
# Anyone with the workshop password can log in under any learner's name: fit for a workshop, not for coursework.
c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = hub.workshop_password
c.SharedPasswordAuthenticator.admin_password = hub.admin_password
c.Authenticator.admin_users = {hub.admin}
c.Authenticator.username_pattern = USERNAME_PATTERN
if hub.learners:
    c.Authenticator.allowed_users = set(hub.learners)
else:
    c.Authenticator.allow_all = True  # any name, with the workshop password

# Each learner's own server and kernel: their account or home, course copy, run folder and Prompt flow home.
c.JupyterHub.spawner_class = spawner_class()
c.CourseSpawner.system_accounts = hub.system_accounts
c.CourseSpawner.state_dir = str(hub.state_dir)
c.CourseSpawner.course_cache = str(hub.course_cache)
# nbgrader: each learner's server fetches and submits through this exchange (docs/workshop.md, "Collecting").
prepare_exchange(hub.exchange_dir)
c.CourseSpawner.exchange_dir = str(hub.exchange_dir)
c.CourseSpawner.course_id = hub.course_id
# Distribution: with HUB_COURSE_REPO (a git URL), each learner's server pulls the course with nbgitpuller when it
# opens, and again from the link the educator shares (python hub/course_hub.py link); else the hub copies this checkout.
if hub.course_repo:
    c.CourseSpawner.course_repo = hub.course_repo
    c.CourseSpawner.course_branch = hub.course_branch
c.Spawner.cmd = singleuser_command()
c.Spawner.default_url = "/lab/tree/notebooks"
c.Spawner.mem_limit = hub.mem_limit
c.Spawner.cpu_limit = hub.cpu_limit
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
c.Spawner.env_keep = [
    "PATH", "PYTHONPATH", "VIRTUAL_ENV", "LANG", "LC_ALL", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY",
    "DO_NOT_TRACK", "COURSE_SHARE_GROUP", "JUPYTERHUB_SINGLEUSER_APP",
]  # fmt: skip
if hub.system_accounts and (why := unreadable_for_learners(hub.course_cache)):
    sys.exit(why)
if not hub.system_accounts and os.geteuid() == 0:  # one-account mode as root: only ever on 127.0.0.1
    c.Spawner.args = ["--ServerApp.allow_root=True"]

# The idle culler stops servers nobody used for HUB_CULL_IDLE_S seconds (their files stay).
c.JupyterHub.services = [
    {
        "name": "idle-culler",
        "command": [sys.executable, "-m", "jupyterhub_idle_culler", f"--timeout={hub.cull_idle_s}"],
    }
]
c.JupyterHub.load_roles = [
    {
        "name": "idle-culler",
        "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
        "services": ["idle-culler"],
    }
]
