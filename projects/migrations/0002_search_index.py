"""The search index (DESIGN decision 9), one per database vendor; projects.search reads it.

Postgres: a GIN index of pg_trgm's trigrams of each blob's content, fastupdate off (a rescan's writes
are searchable at once, no pending list to scan). It indexes show_trgm(content), through the wrapper
projects_blob_trigrams, with the array operator class, rather than the column with gin_trgm_ops: the
same trigrams, but `@>` on an array is exact for GIN, so a lookup never re-reads candidates, while a
gin_trgm_ops lookup (LIKE, ~) rechecks each candidate's whole content: about 100 us per candidate
file, 80 ms for "sys.version_info" on the stdlib + site-packages benchmark against 5 ms this way.
Statistics on the expression are off: ANALYZE would compute show_trgm() over its whole sample (10 s on
that corpus). Also: pg_trgm GIN on symbol names (substring lookup), a prefix index on symbol names, a
(project, path) index in code point order (the order search results come in), and lz4 for contents
where the server has it.

SQLite: an FTS5 trigram table over projects_blob with external content (the text is stored once, in
projects_blob) and detail=none (no positions: about 0.16x the corpus instead of 1.8x with positions;
trigram LIKE/GLOB and single-trigram MATCH still use it). Triggers keep it in step with every insert,
delete and update of a blob. Beware: when a later migration alters projects_blob, Django's SQLite
schema editor rebuilds the table and its triggers are lost; such a migration must run
`sqlite_triggers_create` again (search tests catch a missing trigger).
"""

from typing import Any

from django.db import migrations

POSTGRES_FORWARD = [
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    # plpgsql (never inlined) with a high cost: the planner must look trigrams up in the index, never
    # compute them file by file as a filter (1-2 ms per file).
    (
        "CREATE FUNCTION projects_blob_trigrams(content text) RETURNS text[] LANGUAGE plpgsql IMMUTABLE STRICT"
        " PARALLEL SAFE COST 100000 AS $$ BEGIN RETURN {pg_trgm}.show_trgm(content); END $$"
    ),
    (
        "CREATE INDEX projects_blob_content_trgm ON projects_blob USING gin (projects_blob_trigrams(content))"
        " WITH (fastupdate = off)"
    ),
    "ALTER INDEX projects_blob_content_trgm ALTER COLUMN 1 SET STATISTICS 0",
    "CREATE INDEX projects_symbol_name_trgm ON projects_symbol USING gin (name gin_trgm_ops)",
    "CREATE INDEX projects_symbol_name_prefix ON projects_symbol (project_id, name varchar_pattern_ops)",
    'CREATE INDEX projects_file_project_path_c ON projects_file (project_id, path COLLATE "C")',
    # lz4 decompresses several times faster than the default pglz, and search reads contents a lot.
    # Postgres builds without lz4 keep the default.
    (
        "DO $$ BEGIN ALTER TABLE projects_blob ALTER COLUMN content SET COMPRESSION lz4;"
        " EXCEPTION WHEN feature_not_supported OR undefined_object OR syntax_error THEN NULL; END $$"
    ),
]
# The extension stays: other objects (and other databases' users) may rely on it.
POSTGRES_BACKWARD = [
    "DROP INDEX IF EXISTS projects_blob_content_trgm",
    "DROP FUNCTION IF EXISTS projects_blob_trigrams(text)",
    "DROP INDEX IF EXISTS projects_symbol_name_trgm",
    "DROP INDEX IF EXISTS projects_symbol_name_prefix",
    "DROP INDEX IF EXISTS projects_file_project_path_c",
    (
        "DO $$ BEGIN ALTER TABLE projects_blob ALTER COLUMN content SET COMPRESSION default;"
        " EXCEPTION WHEN feature_not_supported OR undefined_object OR syntax_error THEN NULL; END $$"
    ),
]

SQLITE_TABLE = (
    "CREATE VIRTUAL TABLE projects_blob_fts USING fts5(content, content='projects_blob',"
    " content_rowid='id', tokenize='trigram', detail=none)"
)
SQLITE_TRIGGERS = [
    (
        "CREATE TRIGGER projects_blob_fts_insert AFTER INSERT ON projects_blob BEGIN"
        " INSERT INTO projects_blob_fts(rowid, content) VALUES (new.id, new.content); END"
    ),
    # External content: FTS5 must be told the old text to remove its trigrams.
    (
        "CREATE TRIGGER projects_blob_fts_delete AFTER DELETE ON projects_blob BEGIN"
        " INSERT INTO projects_blob_fts(projects_blob_fts, rowid, content) VALUES ('delete', old.id, old.content);"
        " END"
    ),
    (
        "CREATE TRIGGER projects_blob_fts_update AFTER UPDATE ON projects_blob BEGIN"
        " INSERT INTO projects_blob_fts(projects_blob_fts, rowid, content) VALUES ('delete', old.id, old.content);"
        " INSERT INTO projects_blob_fts(rowid, content) VALUES (new.id, new.content); END"
    ),
]
SQLITE_BACKWARD = [
    "DROP TRIGGER IF EXISTS projects_blob_fts_insert",
    "DROP TRIGGER IF EXISTS projects_blob_fts_delete",
    "DROP TRIGGER IF EXISTS projects_blob_fts_update",
    "DROP TABLE IF EXISTS projects_blob_fts",
]


def sqlite_triggers_create(schema_editor: Any) -> None:
    for sql in SQLITE_TRIGGERS:
        schema_editor.execute(sql.replace("CREATE TRIGGER", "CREATE TRIGGER IF NOT EXISTS", 1))


def forward(apps: Any, schema_editor: Any) -> None:
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(POSTGRES_FORWARD[0])
        with schema_editor.connection.cursor() as cursor:
            cursor.execute("SELECT quote_ident(n.nspname) FROM pg_extension e"
                           " JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_trgm'")
            schema = cursor.fetchone()[0]
        for sql in POSTGRES_FORWARD[1:]:
            schema_editor.execute(sql.replace("{pg_trgm}", schema))
    elif vendor == "sqlite":
        schema_editor.execute(SQLITE_TABLE)
        sqlite_triggers_create(schema_editor)
        # Blobs stored before this migration.
        schema_editor.execute("INSERT INTO projects_blob_fts(projects_blob_fts) VALUES ('rebuild')")


def backward(apps: Any, schema_editor: Any) -> None:
    vendor = schema_editor.connection.vendor
    statements = {"postgresql": POSTGRES_BACKWARD, "sqlite": SQLITE_BACKWARD}.get(vendor, [])
    for sql in statements:
        schema_editor.execute(sql)


class Migration(migrations.Migration):

    dependencies = [
        ("projects", "0001_initial"),
    ]

    operations = [
        migrations.RunPython(forward, backward, elidable=False),
    ]
