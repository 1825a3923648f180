"""docker-compose.yml and docker/*.Dockerfile name only things that exist in the repository.

Every build context, Dockerfile, COPY source, bind-mounted path, `ctl` command, port, CTL_
variable and healthcheck URL is checked against the code, so a rename breaks this test instead
of the deployment.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

import cli
from service.app import create_app
from service.config import Settings

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
OVERRIDE = REPO / "docker-compose.override.yml"
LOCAL = REPO / "docker" / "compose.local.yml"
PUBLIC_BASE = "python:3.11-slim"
DOCKERFILES = sorted((REPO / "docker").glob("*.Dockerfile"))
SETTINGS_FIELDS = set(Settings.model_fields)
ENV_REF = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def _compose() -> dict[str, Any]:
    """docker-compose.yml with docker-compose.override.yml on top, as plain `up` reads them."""
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    override: dict[str, Any] = yaml.safe_load(OVERRIDE.read_text())
    for name, service in override["services"].items():
        assert name in data["services"], f"the override names an unknown service {name}"
        data["services"][name].update(service)
    return data


def _expand(value: str) -> str:
    """Compose-style ${VAR:-default} expansion with the defaults (the environment is not used)."""
    return ENV_REF.sub(lambda m: m.group(2) or "", value)


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _exec_form(args: str) -> list[str]:
    """A JSON exec-form command (``["a", "b"]``) or a shell-form one, as words."""
    parsed = yaml.safe_load(args) if args.startswith("[") else shlex.split(args)
    assert isinstance(parsed, list)
    return [str(a) for a in parsed]


def _words(command: str | list[Any]) -> list[str]:
    """A compose command, string or list, as words."""
    return _exec_form(command) if isinstance(command, str) else [str(c) for c in command]


def _assert_ctl_command(words: list[str]) -> None:
    """``ctl WORDS...`` names a command of cli.COMMANDS and its flags parse."""
    assert words[0] == "ctl", f"expected a ctl command, got {words}"
    rest = words[1:]
    key = next((tuple(rest[:n]) for n in (2, 1) if tuple(rest[:n]) in cli.COMMANDS), None)
    assert key is not None, f"'ctl {' '.join(rest[:2])}' is not in cli.COMMANDS"
    for flag in (w for w in rest if w.startswith("--")):
        assert flag in _flags_of(key), f"ctl {' '.join(key)} has no flag {flag}"


def _flags_of(key: tuple[str, ...]) -> str:
    """The --help text of a ctl command, where its flags are listed."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        cli.main([*key, "--help"])
    return out.getvalue()


def _ctl_vars(mapping: dict[str, Any] | list[str]) -> list[str]:
    names = list(mapping) if isinstance(mapping, dict) else [e.split("=")[0] for e in mapping]
    return [n for n in names if n.startswith("CTL_")]


def _assert_setting(var: str) -> None:
    assert var.removeprefix("CTL_").lower() in SETTINGS_FIELDS, f"{var} is not a Settings field"


def test_compose_services_and_volumes() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"api", "redis"} <= set(services)
    declared_volumes = set(compose.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = _expand(volume).split(":")[0]
            if source.startswith((".", "/")):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in declared_volumes, f"{name}: volume {source} is not declared"
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
        assert "healthcheck" in service or name not in ("api", "redis"), f"{name}: no healthcheck"


def test_compose_builds_and_commands_exist() -> None:
    services = _compose()["services"]
    built = [s for s in services.values() if "build" in s]
    assert built, "no service is built from docker/"
    for service in built:
        context = COMPOSE.parent / service["build"]["context"]
        assert context.is_dir()
        assert (context / service["build"]["dockerfile"]).is_file()
        if "command" in service:
            _assert_ctl_command(_words(service["command"]))


def test_compose_environment_and_ports() -> None:
    services = _compose()["services"]
    api = services["api"]
    for var in _ctl_vars(api["environment"]):
        _assert_setting(var)
    redis_url = api["environment"]["CTL_REDIS_URL"]
    assert redis_url.startswith("redis://redis:"), "the API must use the compose Redis"
    container_ports = {_expand(str(p)).split(":")[-1] for p in api["ports"]}
    command = _words(api["command"])
    assert command[command.index("--port") + 1] in container_ports
    assert str(Settings().port) in container_ports, "the published port is not Settings.port"


def test_compose_healthchecks_hit_real_routes() -> None:
    paths = set(create_app(Settings()).openapi()["paths"])
    api_check = " ".join(_compose()["services"]["api"]["healthcheck"]["test"])
    for url_path in re.findall(r"http://[^/]+(/[\w/]+)", api_check):
        assert url_path in paths, f"healthcheck calls {url_path}, which the API does not serve"
    for dockerfile in DOCKERFILES:
        for word, args in _instructions(dockerfile):
            if word == "HEALTHCHECK":
                for url_path in re.findall(r"http://[^/]+(/[\w/]+)", args):
                    assert url_path in paths, f"{dockerfile.name}: {url_path} is not served"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_sources_commands_and_variables(dockerfile: Path) -> None:
    instructions = _instructions(dockerfile)
    # The base image is a build argument whose default is the public image.
    assert instructions[0] == ("ARG", f"BASE_IMAGE={PUBLIC_BASE}")
    assert [a.split()[0] for w, a in instructions if w == "FROM"] == ["${BASE_IMAGE}"] * 2
    for word, args in instructions:
        if word == "COPY" and "--from=" not in args:
            sources = [a for a in shlex.split(args) if not a.startswith("--")][:-1]
            for source in sources:
                assert (REPO / source).exists(), f"{dockerfile.name}: COPY {source} is missing"
        elif word == "CMD":
            _assert_ctl_command(_exec_form(args))
        elif word == "ENV":
            for var in re.findall(r"(CTL_\w+)=", args):
                _assert_setting(var)
        elif word == "EXPOSE":
            assert args.split("/")[0] == str(Settings().port)


def test_api_image_has_no_torch() -> None:
    api = REPO / "docker" / "api.Dockerfile"
    installs = [a for w, a in _instructions(api) if w == "RUN" and "pip install" in a]
    assert installs, "the API image installs nothing"
    for args in installs:
        assert "torch" not in args.split("&&")[0] and "[train" not in args, args
    copied = [s for w, a in _instructions(api) if w == "COPY" for s in shlex.split(a)[:-1]]
    assert "training" not in copied, "the API image must not carry the (torch) training code"


def test_dockerignore_keeps_data_out() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    for heavy in ("data", "artifacts", "work", ".git"):
        assert heavy in ignored


def test_local_override_keeps_every_service_on_the_host_network() -> None:
    """docker/compose.local.yml: local images, host networking, ports beside the host's own."""
    local: dict[str, Any] = yaml.safe_load(LOCAL.read_text())
    services = _compose()["services"]
    # docker-py refuses published ports on the host network: none may come from the files used.
    base: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    assert not any("ports" in s for s in [*base["services"].values(), *local["services"].values()])
    assert set(local["services"]) == set(services)
    for name, service in local["services"].items():
        assert service["network_mode"] == "host", name
        if "build" in services[name]:
            args = service["build"]["args"]
            assert args["BASE_IMAGE"].startswith("ctl-local/") and args["PIP_NO_INDEX"] == "1"
        else:
            assert service["image"].startswith("ctl-local/"), name
    api_port = _expand(_words(local["services"]["api"]["command"])[-1])
    redis_command = _words(local["services"]["redis"]["command"])
    redis_port = _expand(redis_command[redis_command.index("--port") + 1])
    assert {api_port, redis_port}.isdisjoint({"6379", str(Settings().port)})
    api = local["services"]["api"]
    _assert_ctl_command(_words(api["command"]))
    assert _expand(api["environment"]["CTL_REDIS_URL"]) == f"redis://127.0.0.1:{redis_port}/0"
    assert f":{api_port}/readyz" in _expand(" ".join(api["healthcheck"]["test"]))
    assert redis_port in _expand(" ".join(local["services"]["redis"]["healthcheck"]["test"]))


def test_no_registry_address_in_docker_files() -> None:
    """The images name no index or mirror: addresses come from the machine at build time."""
    files = [COMPOSE, OVERRIDE, LOCAL, *DOCKERFILES, REPO / "docker" / "build-local"]
    files += [REPO / "docker" / "compose.replicas.yml", REPO / "docker" / "haproxy.cfg"]
    for path in files:
        text = path.read_text()
        assert not re.search(r"https?://(?!127\.0\.0\.1)", text), f"{path.name} names an address"


def test_replicas_override_balances_every_api_replica() -> None:
    """docker/compose.replicas.yml (on top of compose.local.yml): every replica on the host
    network on a port of its own, checked by its healthcheck and listed in docker/haproxy.cfg;
    the load balancer is the Debian image docker/build-local makes, on the API's local port, and
    waits for every replica to be healthy."""
    replicas: dict[str, Any] = yaml.safe_load(
        (REPO / "docker" / "compose.replicas.yml").read_text()
    )
    local: dict[str, Any] = yaml.safe_load(LOCAL.read_text())
    services = replicas["services"]
    lb = services.pop("lb")
    assert "api" in services and len(services) >= 2
    build_local = (REPO / "docker" / "build-local").read_text()
    assert lb["image"].startswith("ctl-local/haproxy") and lb["image"] in build_local
    config_path, target = lb["volumes"][0].split(":")[:2]
    config = (REPO / config_path).read_text()
    assert f'"-f", "{target}"' in build_local, "the image's haproxy reads another config file"
    lb_env = {k: _expand(str(v)) for k, v in lb["environment"].items()}
    local_api_port = _expand(_words(local["services"]["api"]["command"])[-1])
    assert f'bind 127.0.0.1:"${{{_port_var(lb_env, local_api_port)}}}"' in config
    ports = set()
    for name, service in services.items():
        assert "ports" not in service, name
        assert service.get("network_mode", local["services"]["api"]["network_mode"]) == "host"
        words = _words(service["command"])
        _assert_ctl_command(words)
        port = _expand(words[words.index("--port") + 1])
        assert f":{port}/readyz" in _expand(" ".join(service["healthcheck"]["test"])), name
        assert f'127.0.0.1:"${{{_port_var(lb_env, port)}}}"' in config, f"{name} is not balanced"
        assert lb["depends_on"][name]["condition"] == "service_healthy"
        ports.add(port)
    assert len(ports) == len(services) and local_api_port not in ports
    assert "option httpchk GET /readyz" in config


def _port_var(environment: dict[str, str], port: str) -> str:
    """The load balancer's environment variable that holds ``port`` (exactly one)."""
    names = [k for k, v in environment.items() if v == port]
    assert len(names) == 1, f"port {port} is not passed to the load balancer once: {names}"
    return names[0]
