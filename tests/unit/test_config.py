"""The config file parser: seed lines, URIs, vhost rules, env overrides, bad lines."""

import pytest

from app.config import ConfigError, load_settings, parse_broker, settings_from_text

SEED = """\
USE_DB,true
DB_NAME,my-db
DB_USERNAME,db-user
DB_PASSWORD,db-password
DB_HOST_ADDRESS,127.0.0.1
DB_PORT,5674
NO_OF_CONNECTIOS,5
RMQ_CONN_STR,id,user:pass@127.0.0.1:5672/vhost
RMQ_CONN_STR,14,primary_user:primary_pass@127.0.0.1:5672/virtual_host,secondary_user:secondary_pass@127.0.0.2:5672/virtual_host
ZMQ_SOCK_ADDRESS,ipc:///tmp/feeds/0
"""


def test_every_seed_line_parses():
    s = settings_from_text(SEED, "seed.cfg", {})
    assert s.use_db is True
    assert (s.db_name, s.db_username, s.db_password, s.db_host, s.db_port) == (
        "my-db", "db-user", "db-password", "127.0.0.1", 5674)
    assert s.pool_size == 5
    assert s.zmq_address == "ipc:///tmp/feeds/0"
    spec = s.connection("14")
    assert spec is not None
    (primary,), (backup,) = spec.primary, spec.backup
    assert (primary.username, primary.password, primary.host, primary.port,
            primary.vhost) == ("primary_user", "primary_pass", "127.0.0.1", 5672, "virtual_host")
    assert (backup.username, backup.host, backup.vhost) == (
        "secondary_user", "127.0.0.2", "virtual_host")
    assert s.connection("id").backup == ()


def test_seed_alias_keys():
    s = settings_from_text("UWS_USE_DB,false\nNO_OF_CONNECTIONS,7\nRMQ_CONN_STR,a,h:1/", "x", {})
    assert s.use_db is False and s.pool_size == 7


@pytest.mark.parametrize("text, vhost", [
    ("u:p@h:5672", "/"),
    ("u:p@h:5672/", "/"),
    ("u:p@h:5672/%2F", "/"),
    ("u:p@h:5672/v1", "v1"),
    ("u:p@h:5672/a%2Fb", "a/b"),
    ("amqp://u:p@h:5672", "/"),
    ("amqp://u:p@h:5672/", "/"),
    ("amqp://u:p@h:5672/%2F", "/"),
    ("amqp://u:p@h/prod", "prod"),
])
def test_vhost_rules(text, vhost):
    assert parse_broker(text).vhost == vhost


def test_uri_forms():
    b = parse_broker("amqps://al%40ce:p%2Cw%3Ad@rabbit.example:5999/v?heartbeat=7&verify=verify_none")
    assert (b.tls, b.username, b.password, b.host, b.port, b.heartbeat, b.verify) == (
        True, "al@ce", "p,w:d", "rabbit.example", 5999, 7, False)
    assert parse_broker("amqps://h").port == 5671
    assert parse_broker("amqp://h").port == 5672
    assert parse_broker("amqp://h").username == "guest"
    assert parse_broker("h").port == 5672


def test_seed_password_may_hold_colon_and_at():
    b = parse_broker("user:p:a@ss@host:1234/v")
    assert (b.username, b.password, b.host, b.port) == ("user", "p:a@ss", "host", 1234)


def test_display_never_shows_password():
    b = parse_broker("amqp://user:s3cret@h:1/v")
    assert "s3cret" not in b.display and "s3cret" not in repr(b) and "s3cret" not in str(b)


def test_several_servers_per_role():
    s = settings_from_text("RMQ_CONN_STR,a,h1:1/;amqp://h2:2/v; h3:3/ ,b1:4/;b2:5/", "x", {})
    spec = s.connection("a")
    assert [b.host for b in spec.primary] == ["h1", "h2", "h3"]
    assert [b.host for b in spec.backup] == ["b1", "b2"]
    with pytest.raises(ConfigError, match="empty server"):
        settings_from_text("RMQ_CONN_STR,a,h1:1/;;h2:1/", "x", {})


def test_pool_knobs():
    s = settings_from_text("RMQ_CONN_STR,a,h:1/\nNO_OF_CONNECTIOS,4\nPOOL_MIN_SIZE,1\nPOOL_MAX_OVERFLOW,3\n"
                           "SERVER_SELECTION,random", "x", {})
    assert (s.pool_size, s.min_size, s.pool_max_overflow, s.server_selection) == (4, 1, 3, "random")
    assert settings_from_text("RMQ_CONN_STR,a,h:1/", "x", {}).min_size == 5
    with pytest.raises(ConfigError, match="POOL_MIN_SIZE"):
        settings_from_text("RMQ_CONN_STR,a,h:1/\nNO_OF_CONNECTIOS,2\nPOOL_MIN_SIZE,3", "x", {})
    with pytest.raises(ConfigError, match="expected one of round_robin, random"):
        settings_from_text("RMQ_CONN_STR,a,h:1/\nSERVER_SELECTION,fastest", "x", {})


def test_comments_blank_lines_and_spaces():
    s = settings_from_text("# comment\n\n   \n  # indented comment\nRMQ_CONN_STR , a , h:1/ \n", "x", {})
    assert s.connection("a").primary[0].host == "h"


@pytest.mark.parametrize("text, line, fragment", [
    ("RMQ_CONN_STR,a,h:1/\nBOGUS,1", 2, "unknown key"),
    ("RMQ_CONN_STR,a", 1, "needs an id and a primary"),
    ("RMQ_CONN_STR,a,h:1/\nRMQ_CONN_STR,a,h:2/", 2, "defined twice"),
    ("RMQ_CONN_STR,bad id!,h:1/", 1, "invalid connection id"),
    ("RMQ_CONN_STR,a,h:99999/", 1, "invalid port"),
    ("RMQ_CONN_STR,a,h:1/,b:2/,c:3/", 1, "expected primary[,backup]"),
    ("RMQ_CONN_STR,a,http://h/", 1, "unsupported scheme"),
    ("RMQ_CONN_STR,a,amqp://h/?foo=1", 1, "unknown URI option"),
    ("RMQ_CONN_STR,a,amqp://h/?cacertfile=/x", 1, "need an amqps"),
    ("RMQ_CONN_STR,a,user@h:1/", 1, "credentials"),
    ("RMQ_CONN_STR,a,h:1/\nNO_OF_CONNECTIOS,zero", 2, "expected a int"),
    ("RMQ_CONN_STR,a,h:1/\nNO_OF_CONNECTIOS,0", 2, "must be between"),
    ("RMQ_CONN_STR,a,h:1/\nUSE_DB,maybe", 2, "expected true or false"),
    ("RMQ_CONN_STR,a,h:1/\nPOOL_TIMEOUT,1,2", 2, "exactly one value"),
])
def test_bad_lines_name_file_line_and_problem(text, line, fragment):
    with pytest.raises(ConfigError) as info:
        settings_from_text(text, "pool.cfg", {})
    message = str(info.value)
    assert message.startswith(f"pool.cfg:{line}: "), message
    assert fragment in message
    assert "\n" not in message


def test_errors_never_show_passwords():
    with pytest.raises(ConfigError) as info:
        settings_from_text("RMQ_CONN_STR,a,user:hunter2@h:notaport/", "pool.cfg", {})
    assert "hunter2" not in str(info.value)


def test_nothing_to_publish_to_is_an_error():
    with pytest.raises(ConfigError, match="nothing to publish to"):
        settings_from_text("NO_OF_CONNECTIOS,2", "x", {})


def test_environment_overrides_file():
    env = {
        "GATEWAY_NO_OF_CONNECTIOS": "9",
        "GATEWAY_DB_PASSWORD": "from-secret",
        "GATEWAY_RMQ_CONN_STR_a": "u:p@other:1/,u:p@backup:2/",
        "GATEWAY_RMQ_CONN_STR_new": "amqp://h2",
        "GATEWAY_BIND": "0.0.0.0:1",  # gunicorn's, ignored here
        "UNRELATED": "x",
    }
    s = settings_from_text("NO_OF_CONNECTIOS,2\nRMQ_CONN_STR,a,h:1/\nRMQ_CONN_STR,b,h:1/", "x", env)
    assert s.pool_size == 9
    assert s.db_password == "from-secret"
    assert s.connection("a").primary[0].host == "other" and s.connection("a").backup[0].host == "backup"
    assert s.connection("b").primary[0].host == "h"
    assert s.connection("new").primary[0].host == "h2"


def test_environment_errors_name_the_variable():
    with pytest.raises(ConfigError, match="environment GATEWAY_POOL_TIMEOUT"):
        settings_from_text("RMQ_CONN_STR,a,h:1/", "x", {"GATEWAY_POOL_TIMEOUT": "soon"})
    with pytest.raises(ConfigError, match="unknown key 'POOL_TIMEOUTT'"):
        settings_from_text("RMQ_CONN_STR,a,h:1/", "x", {"GATEWAY_POOL_TIMEOUTT": "1"})


def test_load_settings_reads_gateway_config(tmp_path):
    path = tmp_path / "p.cfg"
    path.write_text("RMQ_CONN_STR,a,h:1/\n")
    assert load_settings(environ={"GATEWAY_CONFIG": str(path)}).source == str(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(str(tmp_path / "missing.cfg"), environ={})


def test_describe_redacts_every_secret():
    s = settings_from_text(SEED, "seed.cfg", {})
    text = str(s.describe()) + repr(s)
    for secret in ("db-password", "primary_pass", "secondary_pass"):
        assert secret not in text
    assert set(s.secrets()) >= {"db-password", "primary_pass", "secondary_pass"}


def test_shipped_config_is_valid():
    s = load_settings("config/pool.cfg", environ={})
    assert s.connections and s.connection("local") is not None


def test_secrets_directory_supplies_variables_and_the_environment_wins(tmp_path):
    """GATEWAY_SECRETS_DIR: a Kubernetes Secret mounted as files, read like GATEWAY_* variables."""
    secrets = tmp_path / "secret"
    (secrets / "..data").mkdir(parents=True)
    # As the kubelet mounts it: each key a symlink into ..data, whose files hold the values.
    (secrets / "..data" / "GATEWAY_RMQ_CONN_STR_main").write_text("amqp://u:from-file@h:5672/%2F\n")
    (secrets / "GATEWAY_RMQ_CONN_STR_main").symlink_to("..data/GATEWAY_RMQ_CONN_STR_main")
    (secrets / "GATEWAY_DB_PASSWORD").write_text("db-from-file")
    (secrets / "tokens").write_text("not a variable")  # other keys of the Secret are left alone
    cfg = tmp_path / "pool.cfg"
    cfg.write_text("NO_OF_CONNECTIOS,2\n")
    env = {"GATEWAY_SECRETS_DIR": str(secrets), "GATEWAY_DB_PASSWORD": "db-from-env"}
    settings = load_settings(str(cfg), env)
    assert settings.connection("main").primary[0].password == "from-file"  # final newline dropped
    assert settings.db_password == "db-from-env"


def test_missing_secrets_directory_is_one_line(tmp_path):
    cfg = tmp_path / "pool.cfg"
    cfg.write_text("RMQ_CONN_STR,a,u:p@h:5672/\n")
    with pytest.raises(ConfigError, match="cannot read the secrets directory") as info:
        load_settings(str(cfg), {"GATEWAY_SECRETS_DIR": str(tmp_path / "absent")})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("server, hint", [
    ("user:ab,SECRETPW@127.0.0.1:5672/advvh", "%2C"),  # seed form, ',' in the password
    ("amqp://user:pa?SECRETPW@127.0.0.1:5672/advvh", "%3F"),  # URI, unencoded '?'
    ("amqp://user:12#SECRETPW@127.0.0.1:5672/advvh", "%23"),  # URI, '#': was silently misparsed
    ("amqp://user:pa/SECRETPW@127.0.0.1:5672/advvh", "%2F"),
    ("user:12;SECRETPW@127.0.0.1:5672/advvh", "%3B"),
])
def test_a_password_cut_by_a_delimiter_is_an_error_that_says_how_to_write_it(server, hint):
    with pytest.raises(ConfigError) as info:
        settings_from_text(f"RMQ_CONN_STR,a,{server}", "pool.cfg", {})
    message = str(info.value)
    assert hint in message and "SECR" not in message and "ab," not in message, message
