"""shared.db helpers the bulk paths rely on."""


def test_new_id_strings_are_distinct_version_4_uuids_in_canonical_form():
    import uuid

    from shared.db import new_id_strings

    ids = new_id_strings(5000)
    assert len(ids) == len(set(ids)) == 5000
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == text
    assert new_id_strings(0) == []
