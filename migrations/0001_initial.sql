-- The five entity tables (SPEC §4), the job ledger and API keys.
-- Every entity row belongs to exactly one company; every query filters by it.

CREATE TABLE projects (
    guid         uuid PRIMARY KEY,
    company_guid uuid NOT NULL,
    number       text NOT NULL,
    name         text NOT NULL,
    description  text,
    status       text NOT NULL DEFAULT 'active'
                 CHECK (status IN ('planned', 'active', 'on_hold', 'completed', 'archived')),
    start_date   date,
    end_date     date,
    attributes   jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX projects_company_guid_idx ON projects (company_guid);

CREATE TABLE components (
    guid           uuid PRIMARY KEY,
    company_guid   uuid NOT NULL,
    project_guid   uuid NOT NULL,
    name           text NOT NULL,
    component_type text,
    description    text,
    attributes     jsonb,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX components_company_guid_idx ON components (company_guid);
CREATE INDEX components_project_guid_idx ON components (project_guid);

CREATE TABLE assemblies (
    guid           uuid PRIMARY KEY,
    company_guid   uuid NOT NULL,
    project_guid   uuid NOT NULL,
    component_guid uuid,
    mark           text NOT NULL,
    name           text,
    quantity       integer NOT NULL DEFAULT 1 CHECK (quantity >= 1),
    attributes     jsonb,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX assemblies_company_guid_idx ON assemblies (company_guid);
CREATE INDEX assemblies_project_guid_idx ON assemblies (project_guid);
CREATE INDEX assemblies_component_guid_idx ON assemblies (component_guid);

CREATE TABLE pieces (
    guid          uuid PRIMARY KEY,
    company_guid  uuid NOT NULL,
    assembly_guid uuid NOT NULL,
    article_guid  uuid,
    mark          text NOT NULL,
    quantity      integer NOT NULL DEFAULT 1 CHECK (quantity >= 1),
    length_mm     double precision CHECK (length_mm >= 0),
    width_mm      double precision CHECK (width_mm >= 0),
    height_mm     double precision CHECK (height_mm >= 0),
    weight_kg     double precision CHECK (weight_kg >= 0),
    attributes    jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pieces_company_guid_idx ON pieces (company_guid);
CREATE INDEX pieces_assembly_guid_idx ON pieces (assembly_guid);
CREATE INDEX pieces_article_guid_idx ON pieces (article_guid);

CREATE TABLE articles (
    guid         uuid PRIMARY KEY,
    company_guid uuid NOT NULL,
    number       text NOT NULL,
    name         text NOT NULL,
    unit         text,
    description  text,
    attributes   jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX articles_company_guid_idx ON articles (company_guid);

-- One row per accepted request. Inserted by the api before publishing,
-- locked and finished by the worker in the same transaction as the upsert.
CREATE TABLE sync_jobs (
    correlation_id uuid PRIMARY KEY,
    company_guid   uuid NOT NULL,
    entity         text NOT NULL
                   CHECK (entity IN ('projects', 'components', 'assemblies', 'pieces', 'articles')),
    status         text NOT NULL
                   CHECK (status IN ('queued', 'processing', 'succeeded', 'failed')),
    item_count     integer NOT NULL CHECK (item_count >= 0),
    inserted       integer,
    updated        integer,
    unchanged      integer,
    error          jsonb,
    attempts       integer NOT NULL DEFAULT 0,
    dry_run        boolean NOT NULL DEFAULT false,
    shard          integer NOT NULL,
    submitted_by   text NOT NULL,
    submitted_at   timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    completed_at   timestamptz
);
CREATE INDEX sync_jobs_company_submitted_idx ON sync_jobs (company_guid, submitted_at);
CREATE INDEX sync_jobs_completed_idx ON sync_jobs (completed_at) WHERE completed_at IS NOT NULL;

-- API keys: only a SHA-256 of the secret is kept; `id` is the public
-- lookup part of the key.
CREATE TABLE api_keys (
    id           text PRIMARY KEY,
    company_guid uuid NOT NULL,
    scopes       text[] NOT NULL,
    name         text,
    secret_hash  bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);
CREATE INDEX api_keys_company_guid_idx ON api_keys (company_guid);
