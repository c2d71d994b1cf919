-- 001: the backbone tables. Names and meanings are the warehouse contract (README, "Warehouse").

CREATE TABLE runs (
    run_id              VARCHAR PRIMARY KEY,
    flow                VARCHAR NOT NULL,
    started_at          TIMESTAMPTZ NOT NULL,
    finished_at         TIMESTAMPTZ,
    feeds_polled        INTEGER,
    feeds_not_modified  INTEGER,
    feeds_failed        INTEGER,
    new_entries         INTEGER,
    pages_fetched       INTEGER,
    pages_failed        INTEGER,
    articles_extracted  INTEGER,
    duplicates          INTEGER,
    status              VARCHAR
);

CREATE TABLE feeds (
    feed_url             VARCHAR PRIMARY KEY,
    name                 VARCHAR,
    tags                 VARCHAR[],
    title                VARCHAR,
    site_url             VARCHAR,
    format               VARCHAR,
    language             VARCHAR,
    etag                 VARCHAR,
    last_modified        VARCHAR,
    body_hash            VARCHAR,
    last_status          INTEGER,
    last_fetched_at      TIMESTAMPTZ,
    last_success_at      TIMESTAMPTZ,
    last_error_class     VARCHAR,
    last_error           VARCHAR,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    entries_seen         BIGINT NOT NULL DEFAULT 0,
    added_at             TIMESTAMPTZ NOT NULL
);

CREATE TABLE entries (
    entry_key        VARCHAR PRIMARY KEY,   -- hash of feed_url + (guid | link | title)
    feed_url         VARCHAR NOT NULL,
    guid             VARCHAR,
    link             VARCHAR,               -- as the feed gave it (made absolute)
    link_key         VARCHAR,               -- canonical form of link
    title            VARCHAR,
    published_at     TIMESTAMPTZ,
    updated_at       TIMESTAMPTZ,
    summary          VARCHAR,
    author           VARCHAR,
    categories       VARCHAR[],
    enclosures       STRUCT(url VARCHAR, type VARCHAR, length BIGINT)[],
    article_id       VARCHAR,               -- the article this entry's link resolved to
    duplicate_of     VARCHAR,               -- set when the link was already known: the existing article
    duplicate_reason VARCHAR,               -- 'url' for such entries
    status           VARCHAR NOT NULL,      -- 'fetched' | 'duplicate' | 'failed' | 'no_link'
    first_seen_at    TIMESTAMPTZ NOT NULL,
    run_id           VARCHAR NOT NULL,
    load_batch       VARCHAR NOT NULL,
    ingest_date      DATE NOT NULL
);
CREATE INDEX entries_feed ON entries (feed_url);

CREATE TABLE articles (
    article_id        VARCHAR PRIMARY KEY,  -- hash of url_key
    url               VARCHAR NOT NULL,     -- the link exactly as the feed entry gave it
    url_key           VARCHAR NOT NULL UNIQUE, -- canonical form of url
    final_url         VARCHAR,              -- after redirects
    canonical_url     VARCHAR,              -- <link rel=canonical> on the same site, else canonical final_url
    feed_url          VARCHAR,
    entry_key         VARCHAR,
    guid              VARCHAR,
    title             VARCHAR,
    author            VARCHAR,
    published_at      TIMESTAMPTZ,
    language          VARCHAR,
    sitename          VARCHAR,
    description       VARCHAR,
    categories        VARCHAR[],
    tags              VARCHAR[],
    image             VARCHAR,
    text              VARCHAR,
    text_chars        INTEGER,
    content_hash      VARCHAR,
    duplicate_of      VARCHAR,              -- NULL for an original
    duplicate_reason  VARCHAR,              -- 'canonical_url' | 'content_hash'
    http_status       INTEGER,
    fetched_at        TIMESTAMPTZ NOT NULL,
    raw_path          VARCHAR,              -- WARC file under the data dir
    raw_offset        BIGINT,               -- offset of the response record in it
    extractor         VARCHAR,
    extractor_version VARCHAR,
    extractor_options VARCHAR,
    extraction_error  VARCHAR,
    run_id            VARCHAR NOT NULL,
    load_batch        VARCHAR NOT NULL,
    ingest_date       DATE NOT NULL
);
CREATE INDEX articles_canonical_url ON articles (canonical_url);
CREATE INDEX articles_content_hash ON articles (content_hash);

CREATE TABLE fetch_log (
    fetch_id      VARCHAR PRIMARY KEY,
    run_id        VARCHAR NOT NULL,
    kind          VARCHAR NOT NULL,         -- 'feed' | 'page'
    url           VARCHAR NOT NULL,
    final_url     VARCHAR,
    status        INTEGER,
    bytes         BIGINT,
    elapsed_ms    INTEGER,
    attempts      INTEGER,
    redirects     VARCHAR[],
    error_class   VARCHAR,
    error_message VARCHAR,
    fetched_at    TIMESTAMPTZ NOT NULL,
    raw_path      VARCHAR,
    raw_offset    BIGINT,
    load_batch    VARCHAR NOT NULL,
    ingest_date   DATE NOT NULL
);

-- One row per committed load transaction; exported turns true once its Parquet files are in place.
CREATE TABLE load_batches (
    load_batch   VARCHAR PRIMARY KEY,
    run_id       VARCHAR NOT NULL,
    committed_at TIMESTAMPTZ NOT NULL,
    tables       VARCHAR[] NOT NULL,
    exported     BOOLEAN NOT NULL DEFAULT false
);
