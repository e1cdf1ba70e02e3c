//! The OpenAPI 3.1 document of the admin API (docs/openapi.json), compiled in so the ops
//! listener serves exactly the file in the repository.

/// docs/openapi.json, byte for byte.
pub const DOCUMENT: &str = include_str!("../../../docs/openapi.json");

#[cfg(test)]
mod tests {
    use super::DOCUMENT;
    use crate as admin;
    use serde_json::Value;
    use std::collections::{BTreeMap, BTreeSet};

    fn document() -> Value {
        serde_json::from_str(DOCUMENT).expect("docs/openapi.json is JSON")
    }

    /// Follows a local `$ref` (`#/components/...`), or returns the value itself.
    fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
        match value.get("$ref").and_then(Value::as_str) {
            Some(reference) => {
                let pointer = reference
                    .strip_prefix('#')
                    .unwrap_or_else(|| panic!("{reference} is not local"));
                let target = doc
                    .pointer(pointer)
                    .unwrap_or_else(|| panic!("{reference} points nowhere"));
                resolve(doc, target)
            }
            None => value,
        }
    }

    /// The admin API's paths: those without a `servers` of their own (the external-authorization
    /// paths name `listen.authz`).
    fn admin_paths(doc: &Value) -> impl Iterator<Item = (&String, &Value)> {
        doc["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .filter(|(_, item)| item.get("servers").is_none())
    }

    /// path → methods, lower-case, as the document lists them.
    fn documented(doc: &Value) -> BTreeMap<String, BTreeSet<String>> {
        admin_paths(doc)
            .map(|(path, item)| {
                let methods = item
                    .as_object()
                    .unwrap()
                    .keys()
                    .filter(|k| {
                        !["parameters", "summary", "description", "servers"].contains(&k.as_str())
                    })
                    .cloned()
                    .collect();
                (path.clone(), methods)
            })
            .collect()
    }

    #[test]
    fn is_openapi_3_1() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(doc["info"]["title"].is_string());
        // The document describes this build's API.
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        for scheme in ["basic", "apiKey", "tokenCookie", "signature"] {
            assert!(
                doc["components"]["securitySchemes"][scheme].is_object(),
                "security scheme {scheme}"
            );
        }
    }

    #[test]
    fn documents_every_route_of_the_admin_router_and_nothing_else() {
        let doc = document();
        let routed: BTreeMap<String, BTreeSet<String>> = admin::routes()
            .into_iter()
            .map(|(path, methods)| {
                let methods = methods
                    .iter()
                    .map(|m| m.as_str().to_ascii_lowercase())
                    .collect();
                (path.to_owned(), methods)
            })
            .collect();
        assert_eq!(documented(&doc), routed);
    }

    #[test]
    fn every_path_parameter_is_declared() {
        let doc = document();
        for (path, item) in doc["paths"].as_object().unwrap() {
            let in_path: BTreeSet<&str> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            for (method, operation) in item.as_object().unwrap() {
                if method == "servers" {
                    continue;
                }
                let declared: BTreeSet<&str> = operation["parameters"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .map(|p| resolve(&doc, p))
                    .filter(|p| p["in"] == "path")
                    .map(|p| p["name"].as_str().unwrap())
                    .collect();
                assert_eq!(declared, in_path, "{method} {path}");
            }
        }
    }

    /// The refusals every admin call can meet, whatever the endpoint: keyward's own checks
    /// before any handler runs (request target, credentials, security level, method, body
    /// size, rate limits, store).
    #[test]
    fn every_operation_documents_the_common_refusals_with_a_json_body() {
        let doc = document();
        let common = [
            "400", "401", "403", "404", "405", "413", "429", "431", "503",
        ];
        for (path, item) in admin_paths(&doc) {
            for (method, operation) in item.as_object().unwrap() {
                let responses = operation["responses"].as_object().unwrap();
                for status in common {
                    let response = responses
                        .get(status)
                        .unwrap_or_else(|| panic!("{method} {path}: no {status}"));
                    let response = resolve(&doc, response);
                    assert!(
                        response["content"]["application/json"]["schema"].is_object(),
                        "{method} {path} {status}: a JSON error body"
                    );
                }
                assert!(
                    responses.keys().any(|s| s == "200" || s == "201"),
                    "{method} {path}: no success"
                );
                assert!(
                    operation["security"]
                        .as_array()
                        .is_some_and(|s| !s.is_empty()),
                    "{method} {path}: no security"
                );
            }
        }
    }

    /// `listen.authz` (SPEC §13): its three HTTP conventions, on their own server; nginx's
    /// answers are 200, 401 and 403 only.
    #[test]
    fn documents_the_external_authorization_paths() {
        let doc = document();
        let paths = doc["paths"].as_object().unwrap();
        let authz: BTreeSet<&str> = paths
            .iter()
            .filter(|(_, item)| item.get("servers").is_some())
            .map(|(path, _)| path.as_str())
            .collect();
        assert_eq!(
            authz,
            BTreeSet::from(["/auth/nginx", "/auth/forward", "/auth/envoy/{path}"])
        );
        let statuses = |path: &str, method: &str| -> BTreeSet<String> {
            paths[path][method]["responses"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect()
        };
        assert_eq!(
            statuses("/auth/nginx", "get"),
            BTreeSet::from(["200".into(), "401".into(), "403".into()])
        );
        for status in ["200", "401", "403", "429", "503"] {
            assert!(statuses("/auth/forward", "get").contains(status));
            assert!(statuses("/auth/envoy/{path}", "post").contains(status));
        }
        let allowed = resolve(&doc, &paths["/auth/forward"]["get"]["responses"]["200"]);
        for header in [
            "X-Keyward-User",
            "X-Keyward-Auth-Method",
            "Gateway-Request-Id",
        ] {
            assert!(allowed["headers"][header].is_object(), "{header}");
        }
    }

    #[test]
    fn every_reference_resolves() {
        fn walk(doc: &Value, value: &Value) {
            match value {
                Value::Object(map) => {
                    if map.contains_key("$ref") {
                        resolve(doc, value);
                    }
                    map.values().for_each(|v| walk(doc, v));
                }
                Value::Array(items) => items.iter().for_each(|v| walk(doc, v)),
                _ => {}
            }
        }
        let doc = document();
        walk(&doc, &doc);
    }
}
