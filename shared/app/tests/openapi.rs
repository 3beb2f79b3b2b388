//! The committed OpenAPI document (`docs/openapi.json`) is the one the code generates.
//! After changing a route or a view, write it anew with
//! `HANDOFF_WRITE_OPENAPI=1 cargo test -p handoff-app --test openapi`.

use std::path::PathBuf;

#[test]
fn the_committed_openapi_document_is_the_generated_one() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    let generated = handoff_app::entry::api::openapi_json_text();
    if std::env::var_os("HANDOFF_WRITE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).expect("writing docs/openapi.json");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json differs from the document the code generates; write it anew with \
         HANDOFF_WRITE_OPENAPI=1 cargo test -p handoff-app --test openapi"
    );
}
