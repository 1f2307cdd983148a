"""Templates from OCI images, without a registry: import, start sandboxes from them, tenancy, delete."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hutch import InvalidArgumentError, NotFoundError, Sandbox, SandboxError, Template
from hutch.testing.images import File, ImageBuilder

pytestmark = pytest.mark.e2e


def image(tmp_path: Path, fmt: str) -> Path:
    builder = (
        ImageBuilder()
        .busybox()
        .layer(files={"app/hello.txt": "hello from the image\n", "app/doomed.txt": "gone later\n"})
        .layer(whiteouts=["app/doomed.txt"], files={"app/run.sh": File("echo ran\n", mode=0o755)})
        .config(env=["PATH=/bin:/usr/bin", "GREETING=bonjour"], workdir="/app", user="user")
    )
    if fmt == "oci":
        return builder.write_oci_layout(tmp_path / "image-oci", compression="gzip", tar=True)
    return builder.write_docker_save(tmp_path / "image-docker.tar")


@pytest.fixture
def connection(local_stack: Any) -> dict[str, str]:
    return {"api_key": local_stack.api_key, "endpoint": local_stack.endpoint}


@pytest.fixture
def template_name(connection: dict[str, str]) -> Iterator[str]:
    name = f"img-{uuid.uuid4().hex[:8]}"
    yield name
    try:
        Template.delete(name, **connection)
    except NotFoundError:
        pass


@pytest.mark.parametrize("fmt", ["oci", "docker"])
@pytest.mark.parametrize("isolation", ["container", "gvisor"])
def test_an_imported_image_runs_with_its_env_workdir_and_user(
    tmp_path: Path, connection: dict[str, str], template_name: str, fmt: str, isolation: str
) -> None:
    info = Template.import_image(image(tmp_path, fmt), template_name, **connection)
    assert (info.name, info.workdir, info.user) == (template_name, "/app", "user")
    assert "GREETING=bonjour" in info.env and info.source.startswith("sha256:")

    with Sandbox.create(template=template_name, isolation=isolation, **connection) as sandbox:
        run = sandbox.commands.run
        assert run("echo $GREETING").stdout == "bonjour\n"
        assert run("pwd").stdout == "/app\n"
        assert run("id -un").stdout == "user\n"
        assert sandbox.files.read("/app/hello.txt") == "hello from the image\n"
        assert not sandbox.files.exists("/app/doomed.txt")  # the whiteout of the later layer
        assert run("./run.sh").stdout == "ran\n"


def test_templates_are_private_to_their_tenant(
    tmp_path: Path, local_stack: Any, connection: dict[str, str], template_name: str
) -> None:
    Template.import_image(image(tmp_path, "oci"), template_name, **connection)
    other = {"api_key": local_stack.create_tenant(f"other-{uuid.uuid4().hex[:8]}"), "endpoint": local_stack.endpoint}
    assert template_name not in {t.name for t in Template.list(**other)}
    assert template_name in {t.name for t in Template.list(**connection)}
    with pytest.raises(NotFoundError):
        Sandbox.create(template=template_name, **other)
    with pytest.raises(NotFoundError):
        Template.delete(template_name, **other)


def test_a_template_in_use_cannot_be_deleted(tmp_path: Path, connection: dict[str, str], template_name: str) -> None:
    Template.import_image(image(tmp_path, "docker"), template_name, **connection)
    sandbox = Sandbox.create(template=template_name, **connection)
    try:
        with pytest.raises(SandboxError, match="used by 1"):
            Template.delete(template_name, **connection)
    finally:
        sandbox.kill()
        sandbox.close()
    Template.delete(template_name, **connection)
    with pytest.raises(NotFoundError):
        Sandbox.create(template=template_name, **connection)


def test_an_archive_that_is_not_an_image_is_refused(tmp_path: Path, connection: dict[str, str]) -> None:
    junk = tmp_path / "junk.tar"
    subprocess.run(["tar", "-cf", str(junk), "-C", str(tmp_path), "."], check=True)
    with pytest.raises(InvalidArgumentError):
        Template.import_image(junk, f"junk-{uuid.uuid4().hex[:6]}", **connection)
    with pytest.raises(InvalidArgumentError):
        Template.import_image(junk, "Bad Name!", **connection)


def test_the_cli_imports_lists_and_deletes(tmp_path: Path, local_stack: Any, template_name: str) -> None:
    archive = image(tmp_path, "oci")
    imported = subprocess.run(
        ["hutch", "template", "import", str(archive), "--name", template_name],
        env=local_stack.env, capture_output=True, text=True,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == template_name
    listed = subprocess.run(["hutch", "template", "list"], env=local_stack.env, capture_output=True, text=True)
    assert template_name in listed.stdout and "base" in listed.stdout
    deleted = subprocess.run(
        ["hutch", "template", "delete", template_name], env=local_stack.env, capture_output=True, text=True
    )
    assert deleted.returncode == 0, deleted.stderr
