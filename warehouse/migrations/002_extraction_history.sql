-- 002: re-extraction keeps what it replaces.
-- `newsflow backfill --reextract` updates the extraction columns of `articles` in place (the row
-- then names the new extractor version) and first copies the values it replaces here, one row per
-- article and re-extraction, so no extraction is ever lost.

CREATE TABLE extraction_history (
    history_id        VARCHAR PRIMARY KEY,
    article_id        VARCHAR NOT NULL,
    replaced_at       TIMESTAMPTZ NOT NULL,
    title             VARCHAR,
    author            VARCHAR,
    published_at      TIMESTAMPTZ,
    language          VARCHAR,
    sitename          VARCHAR,
    description       VARCHAR,
    categories        VARCHAR[],
    tags              VARCHAR[],
    image             VARCHAR,
    canonical_url     VARCHAR,
    text              VARCHAR,
    text_chars        INTEGER,
    content_hash      VARCHAR,
    extractor         VARCHAR,
    extractor_version VARCHAR,
    extractor_options VARCHAR,
    extraction_error  VARCHAR,
    run_id            VARCHAR NOT NULL,   -- the re-extraction run that replaced these values
    load_batch        VARCHAR NOT NULL,
    ingest_date       DATE NOT NULL
);
CREATE INDEX extraction_history_article ON extraction_history (article_id);
