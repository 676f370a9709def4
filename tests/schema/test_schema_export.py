"""schema.graphql is the exported schema: clients and docs read it, so it must match the code."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_schema_graphql_matches_the_code() -> None:
    spec = importlib.util.spec_from_file_location("export_schema", ROOT / "scripts" / "export_schema.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    exported = (ROOT / "schema.graphql").read_text()
    assert exported == module.sdl(), "schema.graphql is stale: run .venv/bin/python scripts/export_schema.py"


def test_the_contract_names_are_in_the_schema() -> None:
    sdl = (ROOT / "schema.graphql").read_text()
    for name in (
        "me",
        "user(",
        "users(",
        "project(",
        "projects(",
        "roles(",
        "permissions",
        "task(",
        "tasks(",
        "mySessions",
        "auditLog(",
        "register(",
        "login(",
        "refreshToken(",
        "logout",
        "changePassword(",
        "revokeSession(",
        "revokeAllSessions",
        "createUser(",
        "updateMe(",
        "updateUser(",
        "deactivateUser(",
        "assignRole(",
        "revokeRole(",
        "createRole(",
        "updateRole(",
        "deleteRole(",
        "createProject(",
        "updateProject(",
        "archiveProject(",
        "deleteProject(",
        "addProjectMember(",
        "updateProjectMember(",
        "removeProjectMember(",
        "createTask(",
        "cancelTask(",
        "followUpTask(",
        "projectEvents(",
        "taskLogs(",
        "taskUpdates(",
        "type AuthPayload",
        "type ProjectEvent",
        "type TaskLogLine",
        "type Session",
        "enum RoleScope",
        "enum ProjectStatus",
        "enum TaskStatus",
        "enum ProjectEventType",
        "viewerRole: Role",
    ):
        assert name in sdl, name
