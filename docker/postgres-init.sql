-- Fitstream's database roles. The postgres image runs this once, as its superuser in POSTGRES_DB,
-- when it initialises an empty data directory (mounted into /docker-entrypoint-initdb.d/).
--
--   fitstream         the application: owns the database and its schema, runs the migrations.
--                     NOSUPERUSER NOCREATEDB NOCREATEROLE: its password opens Fitstream's data
--                     and nothing else in the cluster.
--   fitstream_reader  read paths (fitstream sql, runs, show, models); the migrations (0007) grant
--                     it SELECT on the history tables.
--
-- Passwords come from the files named by FITSTREAM_DATABASE_PASSWORD_FILE and
-- FITSTREAM_READER_DATABASE_PASSWORD_FILE (compose secrets) into psql variables, never through a
-- command line. Changing a secret file later changes no role: ALTER ROLE … PASSWORD as the superuser.
\set ON_ERROR_STOP on

\getenv app_password_file FITSTREAM_DATABASE_PASSWORD_FILE
\getenv reader_password_file FITSTREAM_READER_DATABASE_PASSWORD_FILE
-- One line, its line ending dropped: the same password Fitstream reads from the same file.
\set app_password `tr -d '\r\n' < :'app_password_file'`
\set reader_password `tr -d '\r\n' < :'reader_password_file'`

SELECT :'app_password' = '' AS app_password_missing, :'reader_password' = '' AS reader_password_missing \gset
\if :app_password_missing
DO $$ BEGIN RAISE EXCEPTION 'fitstream: no password for the role fitstream: FITSTREAM_DATABASE_PASSWORD_FILE is unset, or its file (secrets/postgres_app_password) is missing, unreadable or empty'; END $$;
\endif
\if :reader_password_missing
DO $$ BEGIN RAISE EXCEPTION 'fitstream: no password for the role fitstream_reader: FITSTREAM_READER_DATABASE_PASSWORD_FILE is unset, or its file (secrets/postgres_reader_password) is missing, unreadable or empty'; END $$;
\endif

CREATE ROLE fitstream LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'app_password';
CREATE ROLE fitstream_reader LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'reader_password';

SELECT current_database() AS database \gset
ALTER DATABASE :"database" OWNER TO fitstream;
ALTER SCHEMA public OWNER TO fitstream;
