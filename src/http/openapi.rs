//! The API's contract: `openapi.json` at the repository root (OpenAPI 3.1), built into the
//! binary and served as is by `GET /openapi.json`. Its tests keep the document's paths and
//! the router's routes the same set.

use crate::http::response::ApiResponse;

/// The document exactly as it is in the repository.
const DOCUMENT: &str = include_str!("../../openapi.json");

/// `GET /openapi.json`.
pub fn document() -> ApiResponse {
    ApiResponse::json_text(200, DOCUMENT)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;
    use crate::http::routes::ROUTES;

    /// The methods an OpenAPI path item can hold.
    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    fn parsed() -> Value {
        serde_json::from_str(DOCUMENT).expect("openapi.json is JSON")
    }

    #[test]
    fn the_document_is_openapi_3_1_and_served_unchanged() {
        assert!(parsed()["openapi"]
            .as_str()
            .is_some_and(|version| version.starts_with("3.1.")));
        let response = document();
        assert_eq!(response.status, 200);
        assert_eq!(response.body.as_deref(), Some(DOCUMENT));
    }

    #[test]
    fn the_document_describes_exactly_the_routes_of_the_router() {
        let document = parsed();
        let paths = document["paths"].as_object().expect("paths");
        let documented: BTreeSet<(String, String)> = paths
            .iter()
            .flat_map(|(path, item)| {
                METHODS
                    .iter()
                    .filter(|method| item.get(**method).is_some())
                    .map(|method| (method.to_ascii_uppercase(), path.clone()))
            })
            .collect();
        let routed: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|&(method, path)| (method.to_string(), path.to_string()))
            .collect();
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(
            undocumented.is_empty() && unrouted.is_empty(),
            "routed but not in openapi.json: {undocumented:?}; in openapi.json but not routed: {unrouted:?}"
        );
    }
}
