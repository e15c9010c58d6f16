"""The seed copies in tests/contract/seed/ are what the contract tests read; they must stay
byte-identical to the shared seed when that is checked out beside the repo (../shared/seed/).
"""

from __future__ import annotations

import pytest

from tests.contract.seed_contract import SEED_DIR, SEED_FILES, SHARED_SEED_DIR


@pytest.mark.parametrize("name", SEED_FILES)
def test_seed_copy_is_identical_to_shared_seed(name: str) -> None:
    if not SHARED_SEED_DIR.is_dir():
        pytest.skip(f"no shared seed at {SHARED_SEED_DIR} (clone without ../shared)")
    original = SHARED_SEED_DIR / name
    assert original.is_file(), f"{original} is missing from the shared seed"
    assert (SEED_DIR / name).read_bytes() == original.read_bytes(), (
        f"tests/contract/seed/{name} differs from {original}: copy it again "
        f"(cp {original} {SEED_DIR / name}) and review what changed"
    )


def test_seed_copies_are_present_and_parse() -> None:
    from tests.contract.seed_contract import chat_service_typescript, seed_examples

    assert len(seed_examples()) == 11
    assert "export class ChatService" in chat_service_typescript()
