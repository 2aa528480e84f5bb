"""The half of the configuration that touches the file system: which file to read, who
may read it, the password file, the state directory.

The password may sit inline in the URL only in a config file no one else can read; it
belongs in ``upstream.password_file``: a regular file (never a symbolic link) owned by
root, with no group or other permission bits.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from atlantic.client.config import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    Config,
    ConfigError,
    ConfigProblem,
    UpstreamConfig,
    parse_config,
)
from atlantic.client.state import unsafe_dir_reason

MAX_CONFIG_BYTES = 1 << 20
MAX_PASSWORD_BYTES = 4096
PASSWORD_KEY = "upstream.password_file"
PASSWORD_RULE = "a regular file (not a symbolic link) owned by root, mode 600 or 400"


def config_path(explicit: str | os.PathLike[str] | None = None) -> tuple[Path, bool]:
    """Which file to read, and whether the user named it (then it must exist)."""
    if explicit:
        return Path(explicit), True
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env), True
    return DEFAULT_CONFIG_PATH, False


def _read_config_text(path: Path) -> tuple[str | None, os.stat_result | None, ConfigProblem | None]:
    """The file's text and stat, or the one problem that stops reading it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not hang us
    except OSError as exc:
        return None, None, ConfigProblem("(file)", f"cannot read {path}: {exc.strerror}")
    st = os.fstat(fd)
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISCHR(st.st_mode)):  # /dev/null is fine
        os.close(fd)
        return None, st, ConfigProblem("(file)", f"{path} is not a regular file: name the config file itself")
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(MAX_CONFIG_BYTES + 1)
        except OSError as exc:
            return None, st, ConfigProblem("(file)", f"cannot read {path}: {exc.strerror}")
    if len(data) > MAX_CONFIG_BYTES:
        return None, st, ConfigProblem("(file)", f"{path} is larger than {MAX_CONFIG_BYTES >> 20} MiB: name the config file itself")
    try:
        return data.decode("utf-8"), st, None
    except UnicodeDecodeError as exc:
        return None, st, ConfigProblem("(file)", f"{path} is not UTF-8 text (byte {exc.start}): save it as UTF-8")


def _file_mode_problems(path: Path, st: os.stat_result, cfg: Config) -> list[ConfigProblem]:
    """A config file others may change, or read while it holds a password, is refused."""
    if not stat.S_ISREG(st.st_mode):
        return []
    mode = stat.S_IMODE(st.st_mode)
    problems = []
    if mode & 0o022:
        problems.append(ConfigProblem("(file)", f"{path} is writable by other users (mode {mode:04o}): "
                                                f"run `chmod go-w {path}`"))
    for up in cfg.upstreams:
        if mode & 0o044 and _has_inline_password(up.url):
            problems.append(ConfigProblem(f"{up.key}.url", f"holds a password but {path} is readable by other users "
                                                           f"(mode {mode:04o}): move the password to {up.key}.password_file "
                                                           f"(chmod 600), or run `chmod 600 {path}`"))
    return problems


def _has_inline_password(url: str) -> bool:
    from atlantic.pool.upstream import parse_upstream

    try:
        return parse_upstream(url).password is not None
    except ValueError:
        return False


def check_config_file(path: Path, must_exist: bool, *, secrets: bool = True) -> tuple[Config, list[ConfigProblem]]:
    """Read and validate one file, its mode, the state directory and (with ``secrets``)
    the password file it names; every problem is one line with the key and the fix."""
    if not os.path.lexists(path):
        if must_exist:
            return Config(source=str(path)), [ConfigProblem("(file)", f"{path} does not exist")]
        cfg, problems = Config(source="defaults"), []
    else:
        text, st, problem = _read_config_text(path)
        if problem is not None:
            return Config(source=str(path)), [problem]
        cfg, problems = parse_config(text, str(path))
        problems += _file_mode_problems(path, st, cfg)
    for up in cfg.upstreams if secrets else ():
        if up.password_file is not None:
            try:
                read_password_file(up.password_file, key=f"{up.key}.password_file")
            except ConfigError as exc:
                problems.extend(exc.problems)
    if secrets:  # not for `status` or `down`: they must work whatever became of the file
        from atlantic.client.config_tls import tls_file_problems

        problems += tls_file_problems(cfg.tls)
    if (why := unsafe_dir_reason(cfg.daemon.state_dir)) is not None:
        problems.append(ConfigProblem("daemon.state_dir", why))
    return cfg, problems


def load_config(explicit: str | os.PathLike[str] | None = None, *, secrets: bool = True) -> Config:
    """Load the config from the usual places; raise ConfigError listing every problem.

    ``secrets=False`` leaves the password file unread (``status`` and ``down`` need no
    password, and another user cannot read it anyway).
    """
    path, must_exist = config_path(explicit)
    cfg, problems = check_config_file(path, must_exist, secrets=secrets)
    if problems:
        raise ConfigError(str(path), problems)
    return cfg


def read_password_file(path: Path, *, key: str = PASSWORD_KEY) -> str:
    """The proxy password from ``path``, which must be ``PASSWORD_RULE`` (owned by you
    when you are not root): opened without following a link, checked on the open file.
    ``key`` names the setting in the error."""

    def _password_problem(path: Path, message: str) -> ConfigError:
        return ConfigError(str(path), [ConfigProblem(key, message)])

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _password_problem(path, f"{path} is a symbolic link: name the file itself, {PASSWORD_RULE}") from None
        raise _password_problem(path, f"cannot read {path}: {exc.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _password_problem(path, f"{path} is not a regular file: it must be {PASSWORD_RULE}")
    with os.fdopen(fd, "rb") as f:
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid != os.geteuid():
            raise _password_problem(path, f"{path} belongs to uid {st.st_uid}: it must be {PASSWORD_RULE} "
                                          f"(run `sudo chown root: {path}`)")
        if mode & 0o077:
            raise _password_problem(path, f"{path} has mode {mode:04o}, readable or writable by others: "
                                          f"run `chmod 600 {path}` (it must be {PASSWORD_RULE})")
        try:
            data = f.read(MAX_PASSWORD_BYTES + 1)
        except OSError as exc:
            raise _password_problem(path, f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_PASSWORD_BYTES:
        raise _password_problem(path, f"{path} is larger than {MAX_PASSWORD_BYTES} bytes: it should hold only the proxy password")
    try:
        password = data.decode("utf-8").strip("\r\n")
    except UnicodeDecodeError:
        raise _password_problem(path, f"{path} is not UTF-8 text: it should hold only the proxy password") from None
    if not password:
        raise _password_problem(path, f"{path} is empty; it should hold the proxy password")
    if "\n" in password or "\r" in password:
        raise _password_problem(path, f"{path} holds more than one line: it should hold only the proxy password")
    return password


def upstream_url_with_secret(cfg: Config) -> str:
    """The first upstream's URL with its password filled in (see ``upstream_urls_with_secret``)."""
    return _url_with_secret(cfg, cfg.upstream)


def upstream_urls_with_secret(cfg: Config) -> list[str]:
    """Every upstream's URL, in priority order, with the password from its
    ``password_file`` filled in where one is set."""
    return [_url_with_secret(cfg, up) for up in cfg.upstreams]


def _url_with_secret(cfg: Config, up: UpstreamConfig) -> str:
    url = up.url
    if up.password_file is None or url == "direct":
        return url
    from urllib.parse import quote

    password = read_password_file(up.password_file, key=f"{up.key}.password_file")
    scheme, rest = url.split("://", 1)
    userinfo, _, hostport = rest.rpartition("@")
    if not userinfo:
        raise ConfigError(cfg.source, [ConfigProblem(
            f"{up.key}.url", "a password_file is set but the URL has no user (expected scheme://user@host:port)")])
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:{quote(password, safe='')}@{hostport}"
