"""Runtime-directory and config-path rules."""

import os
import stat

import pytest

from pizauth import paths
from pizauth.paths import PathError


def mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.fixture
def env(monkeypatch):
    for var in ("XDG_RUNTIME_DIR", "TMPDIR", "XDG_CONFIG_HOME", "HOME"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


# -- runtime directory -----------------------------------------------------------------


def test_runtime_dir_from_xdg_creates_both_levels_0700(env, tmp_path):
    base = tmp_path / "rt"
    env.setenv("XDG_RUNTIME_DIR", str(base))
    rundir = paths.runtime_dir()
    assert rundir == str(base / "pizauth")
    assert mode(base) == 0o700
    assert mode(base / "pizauth") == 0o700


def test_runtime_dir_chmods_existing_dirs(env, tmp_path):
    base = tmp_path / "rt"
    (base / "pizauth").mkdir(parents=True)
    os.chmod(base, 0o755)
    os.chmod(base / "pizauth", 0o777)
    env.setenv("XDG_RUNTIME_DIR", str(base))
    paths.runtime_dir()
    assert mode(base) == 0o700
    assert mode(base / "pizauth") == 0o700


def test_runtime_dir_trailing_slash(env, tmp_path):
    env.setenv("XDG_RUNTIME_DIR", str(tmp_path) + "/")
    assert paths.runtime_dir() == str(tmp_path / "pizauth")


def test_runtime_dir_is_not_recursive(env, tmp_path):
    env.setenv("XDG_RUNTIME_DIR", str(tmp_path / "missing" / "rt"))
    with pytest.raises(PathError) as e:
        paths.runtime_dir()
    assert str(e.value) == "Can't create cache dir: No such file or directory (os error 2)"


def test_runtime_base_is_a_file(env, tmp_path):
    base = tmp_path / "rt"
    base.write_text("")
    env.setenv("XDG_RUNTIME_DIR", str(base))
    with pytest.raises(PathError) as e:
        paths.runtime_dir()
    assert str(e.value) == "Can't create cache dir: Not a directory (os error 20)"


def test_runtime_dir_chmod_failure(env, tmp_path):
    env.setenv("XDG_RUNTIME_DIR", str(tmp_path))

    def fail(p, m):
        raise PermissionError(1, "Operation not permitted")

    env.setattr(paths.os, "fchmod", fail)
    with pytest.raises(PathError) as e:
        paths.runtime_dir()
    assert str(e.value) == f"Can't set permissions for {tmp_path} to 0700 (octal)"


def test_runtime_dir_undecodable_path_in_message(env, tmp_path):
    bad = os.fsdecode(os.fsencode(str(tmp_path)) + b"/\xff")
    env.setenv("XDG_RUNTIME_DIR", bad)

    def fail(p, m):
        raise PermissionError(1, "Operation not permitted")

    env.setattr(paths.os, "fchmod", fail)
    with pytest.raises(PathError) as e:
        paths.runtime_dir()
    assert str(e.value) == (
        "Can't set permissions for <path cannot be represented as UTF-8> to 0700 (octal)"
    )


def test_runtime_dir_tolerates_concurrent_creation(env, tmp_path):
    # Another client made the directory between our existence check and mkdir.
    (tmp_path / "pizauth").mkdir()
    env.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert paths.runtime_dir() == str(tmp_path / "pizauth")


def recorded(env) -> list[str]:
    made: list[str] = []
    env.setattr(paths, "_make_private_dir", lambda p, strict=False: made.append(p))
    return made


def test_runtime_dir_tmpdir_fallback(env, tmp_path):
    made = recorded(env)
    env.setenv("TMPDIR", str(tmp_path))
    env.setattr(paths, "_username", lambda: "alice")
    assert paths.runtime_dir() == f"{tmp_path}/runtime-alice/pizauth"
    assert made == [f"{tmp_path}/runtime-alice", f"{tmp_path}/runtime-alice/pizauth"]


def test_runtime_dir_tmp_fallback(env):
    made = recorded(env)
    env.setattr(paths, "_username", lambda: "alice")
    assert paths.runtime_dir() == "/tmp/runtime-alice/pizauth"
    env.setenv("TMPDIR", "")  # ${TMPDIR:-/tmp}
    assert paths.runtime_dir() == "/tmp/runtime-alice/pizauth"
    assert made[0] == "/tmp/runtime-alice"


def test_empty_xdg_runtime_dir_is_unset(env, tmp_path):
    # docs/compatibility.md "Empty environment variables": the original would work relative to the
    # cwd.
    made = recorded(env)
    env.setenv("XDG_RUNTIME_DIR", "")
    env.setenv("TMPDIR", str(tmp_path))
    env.setattr(paths, "_username", lambda: "bob")
    assert paths.runtime_dir() == f"{tmp_path}/runtime-bob/pizauth"
    assert made[0] == f"{tmp_path}/runtime-bob"


def test_username(env):
    import pwd

    assert paths._username() == pwd.getpwuid(os.getuid()).pw_name

    def missing(uid):
        raise KeyError(uid)

    env.setattr(pwd, "getpwuid", missing)
    assert paths._username() == "unknown-user"


def test_socket_path():
    assert paths.socket_path("/run/user/1/pizauth") == "/run/user/1/pizauth/pizauth.sock"


def test_os_error_text():
    assert paths.os_error_text(FileNotFoundError(2, "x")) == (
        "No such file or directory (os error 2)"
    )
    assert paths.os_error_text(OSError("odd")) == "odd"


# -- config file -----------------------------------------------------------------------


def test_explicit_config_returned_as_given(env):
    assert paths.config_path("relative/missing.conf") == "relative/missing.conf"


def test_config_from_xdg(env, tmp_path):
    (tmp_path / "pizauth.conf").write_text("")
    env.setenv("XDG_CONFIG_HOME", str(tmp_path))
    env.setenv("HOME", "/nonexistent")
    assert paths.config_path(None) == str(tmp_path / "pizauth.conf")


def test_config_from_home(env, tmp_path):
    (tmp_path / ".config").mkdir()
    (tmp_path / ".config" / "pizauth.conf").write_text("")
    env.setenv("HOME", str(tmp_path))
    assert paths.config_path(None) == str(tmp_path / ".config" / "pizauth.conf")


def test_config_falls_back_from_xdg_to_home(env, tmp_path):
    # docs/compatibility.md "Config file fallback": the original stopped at the XDG path.
    xdg = tmp_path / "xdg"
    xdg.mkdir()
    (tmp_path / ".config").mkdir()
    (tmp_path / ".config" / "pizauth.conf").write_text("")
    env.setenv("XDG_CONFIG_HOME", str(xdg))
    env.setenv("HOME", str(tmp_path))
    assert paths.config_path(None) == str(tmp_path / ".config" / "pizauth.conf")


def test_config_must_be_a_regular_file(env, tmp_path):
    (tmp_path / "pizauth.conf").mkdir()
    env.setenv("XDG_CONFIG_HOME", str(tmp_path))
    with pytest.raises(PathError) as e:
        paths.config_path(None)
    assert str(e.value) == f"No config file found at {tmp_path}/pizauth.conf"


def test_missing_config_names_last_path_tried(env, tmp_path):
    env.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    env.setenv("HOME", str(tmp_path))
    with pytest.raises(PathError) as e:
        paths.config_path(None)
    assert str(e.value) == f"No config file found at {tmp_path}/.config/pizauth.conf"


def test_missing_config_without_home(env, tmp_path):
    env.setenv("XDG_CONFIG_HOME", str(tmp_path))
    with pytest.raises(PathError) as e:
        paths.config_path(None)
    assert str(e.value) == f"No config file found at {tmp_path}/pizauth.conf"


@pytest.mark.parametrize("value", [None, ""])
def test_neither_xdg_config_home_nor_home_uses_the_password_database(env, value, tmp_path):
    import pwd

    if value is not None:
        env.setenv("XDG_CONFIG_HOME", value)
        env.setenv("HOME", value)
    expected = os.path.join(pwd.getpwuid(os.getuid()).pw_dir, ".config", "pizauth.conf")
    assert paths.config_path(None, must_exist=False) == expected
    # A relative or missing home in the password database: nothing to fall back on.
    fake = type("Entry", (), {"pw_dir": "relative/home"})
    env.setattr(pwd, "getpwuid", lambda uid: fake)
    with pytest.raises(PathError) as e:
        paths.config_path(None)
    assert str(e.value) == "Neither $XDG_CONFIG_HOME or $HOME set"
    # An explicit path needs neither.
    assert paths.config_path("x.conf") == "x.conf"


def test_empty_xdg_config_home_is_unset(env, tmp_path):
    (tmp_path / "pizauth.conf").write_text("")  # would be found relative to a cwd
    env.chdir(tmp_path)
    env.setenv("XDG_CONFIG_HOME", "")
    env.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(PathError) as e:
        paths.config_path(None)
    assert str(e.value) == f"No config file found at {tmp_path}/home/.config/pizauth.conf"


def test_config_path_not_required_to_exist(env, tmp_path):
    env.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    env.setenv("HOME", str(tmp_path))
    # Nothing exists: the preferred location.
    assert paths.config_path(None, must_exist=False) == f"{tmp_path}/xdg/pizauth.conf"
    # The file that would be used if there is one.
    (tmp_path / ".config").mkdir()
    (tmp_path / ".config" / "pizauth.conf").write_text("")
    assert paths.config_path(None, must_exist=False) == f"{tmp_path}/.config/pizauth.conf"
    assert paths.config_path("given", must_exist=False) == "given"
    env.delenv("XDG_CONFIG_HOME")
    env.delenv("HOME")
    # The password database's home then (test_neither_xdg_config_home_nor_home_...).
    assert paths.config_path(None, must_exist=False).endswith("/.config/pizauth.conf")


def test_expand_home_uses_home(env, tmp_path):
    env.setenv("HOME", str(tmp_path))
    assert paths.expand_home("~/state/tokens") == str(tmp_path / "state" / "tokens")
    assert paths.expand_home("/abs/~/x") == "/abs/~/x"


def test_expand_home_without_home_uses_password_database(env):
    import pwd

    env.delenv("HOME", raising=False)
    expected = os.path.join(pwd.getpwuid(os.getuid()).pw_dir, "t")
    assert paths.expand_home("~/t") == expected


def test_expand_home_refuses_a_relative_home(env):
    env.setenv("HOME", "relative")
    with pytest.raises(PathError, match="no absolute home directory"):
        paths.expand_home("~/t")


# -- the shared /tmp fallback: someone else may have been there first -------------------------


@pytest.fixture
def fallback(env, tmp_path):
    """$XDG_RUNTIME_DIR unset, so the base is $TMPDIR/runtime-alice; TMPDIR stands for /tmp."""
    shared = tmp_path / "tmp"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o1777)
    env.setenv("TMPDIR", str(shared))
    env.setattr(paths, "_username", lambda: "alice")
    return shared / "runtime-alice"


def test_fallback_is_created_private(fallback):
    assert paths.runtime_dir() == str(fallback / "pizauth")
    assert mode(fallback) == mode(fallback / "pizauth") == 0o700
    assert paths.runtime_dir() == str(fallback / "pizauth")  # and taken again as it is


def test_fallback_symlink_is_refused_and_its_target_untouched(fallback, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o755)
    os.chmod(victim, 0o755)
    fallback.symlink_to(victim)
    with pytest.raises(PathError) as e:
        paths.runtime_dir()
    assert str(e.value) == f"Refusing {fallback}: it is a symbolic link"
    assert mode(victim) == 0o755  # no chmod through the link
    assert not (victim / "pizauth").exists()


def test_fallback_symlink_to_a_file_is_refused(fallback, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("")
    os.chmod(victim, 0o644)
    fallback.symlink_to(victim)
    with pytest.raises(PathError, match="symbolic link"):
        paths.runtime_dir()
    assert mode(victim) == 0o644


def test_fallback_with_loose_permissions_is_refused(fallback):
    fallback.mkdir()
    os.chmod(fallback, 0o777)
    with pytest.raises(PathError) as e:
        paths.runtime_dir()
    assert str(e.value) == (
        f"Refusing {fallback}: its permissions are 777, not 700, so other users may have "
        "used it; remove it and try again"
    )
    assert mode(fallback) == 0o777


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a directory of another uid")
@pytest.mark.parametrize("level", ["base", "leaf"])
def test_directory_of_another_user_is_refused(fallback, level):
    fallback.mkdir(mode=0o700)
    target = fallback if level == "base" else fallback / "pizauth"
    if level == "leaf":
        target.mkdir(mode=0o700)
    os.chown(target, 65534, 65534)
    with pytest.raises(PathError) as e:
        paths.runtime_dir()
    assert str(e.value) == f"Refusing {target}: it belongs to another user (uid 65534)"


def test_symlinked_leaf_is_refused(env, tmp_path):
    base = tmp_path / "rt"
    base.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (base / "pizauth").symlink_to(tmp_path / "elsewhere")
    env.setenv("XDG_RUNTIME_DIR", str(base))
    with pytest.raises(PathError, match="symbolic link"):
        paths.runtime_dir()
