//! The OpenAPI 3.1 document of the HTTP API, generated from the handlers and types
//! (`bkg-agent --print-openapi`, `make api-schema` → schema/openapi.yaml). `/mcp` speaks
//! JSON-RPC (MCP) and is described in docs/api.md instead; `/ui` serves HTML pages (docs/ui.md).

use std::collections::HashMap;

use axum::http::Method;
use utoipa::Modify;
use utoipa::OpenApi;
use utoipa::openapi::path::ParameterIn;
use utoipa::openapi::schema::{KnownFormat, SchemaFormat};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, Ref, RefOr, ResponseBuilder};

use crate::server::{auth_api, changes, deps_api, files, run_files, runs, sandboxes, sessions, system, terminal};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "bkg agent API",
        description = "Runs untrusted Python and Node.js code in sandboxes. On TCP every request needs \
            `Authorization: Bearer <key>` except login (a password) and rotation notices (an HMAC signature); \
            on the unix socket, root and the agent's user are admins. Errors are `{\"error\":{\"code\",\"message\"}}`. \
            A method a path does not take is 405 `method_not_allowed`, with `Allow` naming those it does.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        system::healthz,
        system::metrics,
        system::openapi,
        system::agent_info,
        system::shutdown,
        system::sync_status,
        system::sync_migrate,
        system::sync_retry,
        system::sync_audit_lines,
        changes::changes,
        runs::create_run,
        runs::list_runs,
        runs::get_run,
        runs::cancel_run,
        run_files::list_run_files,
        run_files::get_run_file,
        sandboxes::list_sandboxes,
        sandboxes::create_sandbox,
        sandboxes::get_sandbox,
        sandboxes::put_sandbox,
        sandboxes::delete_sandbox,
        sandboxes::start_sandbox,
        sandboxes::exec_sandbox,
        sandboxes::stop_sandbox,
        sandboxes::sandbox_logs,
        terminal::run_terminal,
        terminal::sandbox_terminal,
        files::upload,
        files::download,
        files::list,
        sessions::create_session,
        sessions::list_sessions,
        sessions::get_session,
        sessions::delete_session,
        sessions::execute,
        sessions::interrupt,
        sessions::restart,
        auth_api::signup,
        auth_api::list_users,
        auth_api::remove_user,
        auth_api::login,
        auth_api::refresh,
        auth_api::whoami,
        auth_api::create_key,
        auth_api::list_keys,
        auth_api::get_key,
        auth_api::rotate_key,
        auth_api::revoke_key,
        auth_api::delete_key,
        auth_api::rotation_notice,
        deps_api::list_envs,
        deps_api::prune_envs,
        deps_api::list_secrets,
        deps_api::put_secret,
        deps_api::delete_secret,
    ),
    components(schemas(
        bkg_schema::terminal::TerminalSize,
        bkg_schema::terminal::ShellRequest,
        bkg_schema::terminal::TerminalControl,
        bkg_schema::terminal::TerminalEvent,
    )),
    modifiers(&BearerAuth, &CommonErrors),
    security(("bearer" = [])),
    tags(
        (name = "agent", description = "Health, metrics and the agent itself"),
        (name = "runs", description = "Code run once in a temporary sandbox"),
        (name = "sandboxes", description = "Persistent sandboxes"),
        (name = "files", description = "Files into and out of a persistent sandbox, as tar streams"),
        (name = "sessions", description = "Interpreter sessions in a persistent sandbox: state kept between executions"),
        (name = "auth", description = "Users, login and the caller"),
        (name = "keys", description = "API keys: create, rotate, revoke"),
        (name = "envs", description = "Python environments built for runs' packages"),
        (name = "secrets", description = "Secrets given to runs as environment variables"),
        (name = "changes", description = "The change feed: runs, sandboxes, keys and audit events as they happen"),
    ),
)]
pub struct ApiDoc;

#[derive(Debug, thiserror::Error)]
#[error("cannot write the OpenAPI document as YAML: {0}")]
pub struct YamlError(String);

/// The document as YAML, as checked in at schema/openapi.yaml.
pub fn yaml() -> Result<String, YamlError> {
    let plain = ApiDoc::openapi().to_yaml().map_err(|error| YamlError(error.to_string()))?;
    Ok(plain.lines().map(|line| quote_yaml_1_1_word(line) + "\n").collect())
}

/// The document as JSON, as `GET /api/v1/openapi.json` serves it.
pub fn json() -> Result<Vec<u8>, serde_json::Error> {
    let written = serde_json::to_vec(&ApiDoc::openapi());
    hand_back_freed_heap();
    written
}

/// What one operation takes besides its path: the names of its query parameters, and whether
/// it has a request body at all.
pub struct Inputs {
    pub query: Vec<String>,
    pub body: bool,
}

/// What each operation takes, by method and path as the document writes it
/// (`/api/v1/runs/{id}`): the document is the one place that says what a route takes, and the
/// gatekeeper refuses any other query parameter, and a body where the operation has none
/// (server.rs).
pub fn inputs() -> HashMap<(Method, String), Inputs> {
    let document = ApiDoc::openapi();
    let mut taken = HashMap::new();
    for (path, item) in &document.paths.paths {
        let shared = item.parameters.iter().flatten();
        let operations = [
            (Method::GET, &item.get),
            (Method::PUT, &item.put),
            (Method::POST, &item.post),
            (Method::DELETE, &item.delete),
        ];
        for (method, operation) in operations {
            let Some(operation) = operation else { continue };
            let query = shared
                .clone()
                .chain(operation.parameters.iter().flatten())
                .filter_map(|parameter| match parameter {
                    RefOr::T(parameter) if parameter.parameter_in == ParameterIn::Query => Some(parameter.name.clone()),
                    _ => None,
                })
                .collect();
            taken.insert((method, path.clone()), Inputs { query, body: operation.request_body.is_some() });
        }
    }
    drop(document);
    hand_back_freed_heap();
    taken
}

/// Building the document takes about 7 MiB of heap, freed once it is dropped but kept by the
/// allocator's arenas, which the idle agent's RSS showed from its first request on (`make
/// bench`: 23.5 MiB against 17.9).
fn hand_back_freed_heap() {
    // SAFETY: malloc_trim only hands free memory of glibc's arenas back to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The words YAML 1.1 reads as booleans, which YAML 1.2 (the writer's) leaves plain.
const YAML_1_1_BOOLEANS: [&str; 6] = ["y", "n", "yes", "no", "on", "off"];

/// `line` with a value or list item that is one of `YAML_1_1_BOOLEANS` quoted: the writer
/// leaves `- no` (`RestartPolicy`) plain, which YAML 1.1 parsers (PyYAML, SnakeYAML, so many
/// code generators) read as `false`.
fn quote_yaml_1_1_word(line: &str) -> String {
    let value_at = line.strip_suffix(line.trim_start_matches(' ')).map_or(0, str::len);
    let rest = &line[value_at..];
    let (head, word) = match rest.strip_prefix("- ") {
        Some(item) => (&line[..value_at + 2], item),
        None => match rest.split_once(": ") {
            Some((key, value)) if !key.contains(' ') => (&line[..line.len() - value.len()], value),
            _ => return line.to_owned(),
        },
    };
    match YAML_1_1_BOOLEANS.iter().any(|boolean| word.eq_ignore_ascii_case(boolean)) {
        true => format!("{head}'{word}'"),
        false => line.to_owned(),
    }
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.description = Some("An API key (bkg_admin_…, bkg_ns_…, bkg_sess_…, bkg_model_…)".into());
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// Bytes as they come, a tar stream or a kept file: `type: string, format: binary`, where
/// utoipa writes a `Vec<u8>` body as an array of integers, which no client reads as a file
/// (found by a new-user trial).
pub enum Binary {}

impl utoipa::PartialSchema for Binary {
    fn schema() -> RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}

impl utoipa::ToSchema for Binary {}

/// The answers any operation may give besides its own: the gatekeeper's (401 no or bad key,
/// 408 a body too slow, 413 body too large, 429 over the rate, 503 the body budget spent) and
/// the input checks' (400 unreadable, 422 invalid, 403 not allowed for this key, 404 not found
/// or not visible to this key). Every request passes the gatekeeper, so each of its answers is
/// documented on every operation (found by a new-user trial: 408 and 503 were missing).
struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let common = [
            ("400", "The request cannot be read (bad JSON, bad query)"),
            ("401", "No key, or a key that is unknown, expired or revoked"),
            ("403", "This key's role or namespace does not allow it"),
            ("404", "No such thing, or not in the key's namespace"),
            ("408", "The request body did not arrive within the agent's --body-timeout"),
            ("413", "The body is over the size limit"),
            ("422", "The request is well-formed but its values are refused"),
            ("429", "Over the key's request rate; see Retry-After"),
            ("503", BODY_BUDGET_SPENT),
        ];
        for item in openapi.paths.paths.values_mut() {
            let operations = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete];
            for operation in operations.into_iter().flatten() {
                for (status, description) in common {
                    if let Some(RefOr::T(own)) = operation.responses.responses.get_mut(status) {
                        // An operation's own 503 (a full queue, a sandbox that failed) is still
                        // also the gatekeeper's.
                        if status == "503" {
                            own.description = format!("{}; or {}", own.description, lowercase_first(BODY_BUDGET_SPENT));
                            own.headers.entry("Retry-After".to_owned()).or_insert_with(|| retry_after().into());
                        }
                        continue;
                    }
                    let mut response = ResponseBuilder::new().description(description).content(
                        "application/json",
                        ContentBuilder::new().schema(Some(Ref::from_schema_name("ApiError"))).build(),
                    );
                    if status == "429" || status == "503" {
                        response = response.header("Retry-After", retry_after());
                    }
                    operation.responses.responses.insert(status.to_owned(), response.build().into());
                }
            }
        }
    }
}

/// What the gatekeeper's 503 says.
const BODY_BUDGET_SPENT: &str = "The agent holds as many request bodies as it will at once; see Retry-After";

fn lowercase_first(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map(|first| first.to_lowercase().chain(chars).collect()).unwrap_or_default()
}

fn retry_after() -> utoipa::openapi::header::Header {
    let seconds = utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::Integer)
        .minimum(Some(0))
        .build();
    HeaderBuilder::new().schema(Some(seconds)).description(Some("Seconds to wait")).build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_documents_the_gatekeepers_answers() -> Result<(), YamlError> {
        let document = ApiDoc::openapi();
        assert!(document.paths.paths.len() >= 20);
        for item in document.paths.paths.values() {
            for operation in [&item.get, &item.put, &item.post, &item.delete].into_iter().flatten() {
                for status in ["401", "408", "413", "429", "503"] {
                    assert!(operation.responses.responses.contains_key(status), "{:?}", operation.operation_id);
                }
            }
        }
        assert!(yaml()?.starts_with("openapi: 3.1"));
        Ok(())
    }

    /// Every `namespace` the document describes has the agent's own rule (it allowed 63
    /// characters where the agent takes 56; found by a new-user trial).
    #[test]
    fn every_namespace_in_the_document_has_the_agents_rule() -> Result<(), YamlError> {
        fn patterns(value: &serde_json::Value, found: &mut Vec<String>) {
            match value {
                serde_json::Value::Object(fields) => {
                    if let Some(pattern) = fields.get("namespace").and_then(|field| field.get("pattern")) {
                        found.push(pattern.as_str().unwrap_or_default().to_owned());
                    }
                    fields.values().for_each(|child| patterns(child, found));
                }
                serde_json::Value::Array(items) => items.iter().for_each(|child| patterns(child, found)),
                _ => {}
            }
        }
        let document = serde_json::to_value(ApiDoc::openapi()).map_err(|error| YamlError(error.to_string()))?;
        let mut found = Vec::new();
        patterns(&document, &mut found);
        assert!(found.len() >= 5, "{found:?}");
        assert!(found.iter().all(|pattern| pattern == bkg_schema::sandbox::NAMESPACE_PATTERN), "{found:?}");
        let longest = format!("^[a-z0-9]([a-z0-9-]{{0,{}}}[a-z0-9])?$", bkg_schema::sandbox::MAX_NAMESPACE_LEN - 2);
        assert_eq!(bkg_schema::sandbox::NAMESPACE_PATTERN, longest);
        Ok(())
    }

    /// The document's bound on `requires_python` is the one the agent applies (an attribute
    /// takes a literal only).
    #[test]
    fn requires_python_has_the_agents_bound() -> Result<(), YamlError> {
        let document = serde_json::to_value(ApiDoc::openapi()).map_err(|error| YamlError(error.to_string()))?;
        let bound = &document["components"]["schemas"]["RunRequest"]["properties"]["requires_python"]["maxLength"];
        assert_eq!(bound.as_u64(), Some(bkg_schema::requirements::MAX_REQUIRES_PYTHON_BYTES as u64), "{bound}");
        Ok(())
    }

    #[test]
    fn words_yaml_1_1_reads_as_booleans_are_quoted_and_nothing_else_changes() -> Result<(), YamlError> {
        assert_eq!(quote_yaml_1_1_word("      - no"), "      - 'no'");
        assert_eq!(quote_yaml_1_1_word("  default: Off"), "  default: 'Off'");
        for kept in ["      - on-failure", "  nullable: true", "  description: no such run", "no"] {
            assert_eq!(quote_yaml_1_1_word(kept), kept);
        }
        let plain = ApiDoc::openapi().to_yaml().map_err(|error| YamlError(error.to_string()))?;
        let read =
            |text: &str| yaml_serde::from_str::<yaml_serde::Value>(text).map_err(|error| YamlError(error.to_string()));
        assert_eq!(read(&yaml()?)?, read(&plain)?);
        assert!(yaml()?.contains("- 'no'"));
        Ok(())
    }

    #[test]
    fn the_checked_in_document_is_the_generated_one() -> Result<(), YamlError> {
        let generated = yaml()?;
        let checked_in = include_str!("../../schema/openapi.yaml");
        // Not assert_eq: a diff of two 3000-line documents helps nobody; the fix is one command.
        assert!(generated == checked_in, "schema/openapi.yaml differs from the code's API: run `make api-schema`");
        Ok(())
    }
}
