//! Each RPC's declaration of who may call it and what the audit trail records of it: the
//! `strata.v1.auth` option every method carries in `proto/` (see `proto/strata/v1/auth.proto`),
//! read once at start-up from the descriptor set the server also serves through reflection. This
//! is the only place roles are written; `docs/api.md` lists them (a test compares the two).

use std::{collections::HashMap, sync::Arc};

use prost_reflect::{DescriptorPool, MessageDescriptor, Value};
use strata_client::pb;

use super::convert::auth_role;
use crate::config::Role;

/// The full name of the method option.
const OPTION: &str = "strata.v1.auth";

/// What one method declares.
#[derive(Debug, Clone)]
pub struct MethodRule {
    /// The least role that may call it.
    pub role: Role,
    /// Every call is recorded in the audit trail.
    pub mutates: bool,
    /// Request fields (dotted paths) that name the resource acted on.
    pub resources: Vec<String>,
    /// A token scoped to file owners may call it.
    pub scoped: bool,
    /// The request message.
    pub input: MessageDescriptor,
    /// Client streaming (the request is a stream of messages).
    pub client_streaming: bool,
    /// Server streaming (the response is a stream of messages).
    pub server_streaming: bool,
}

impl MethodRule {
    /// One request, one response: the default deadline applies.
    pub fn unary(&self) -> bool {
        !self.client_streaming && !self.server_streaming
    }
}

/// Every strata method by its gRPC path (`/strata.v1.FileService/Upload`).
#[derive(Debug, Clone)]
pub struct Methods {
    by_path: HashMap<String, Arc<MethodRule>>,
}

impl Methods {
    /// The methods of strata's own descriptor set.
    pub fn load() -> Result<Self, String> {
        Self::from_descriptor_set(pb::FILE_DESCRIPTOR_SET)
    }

    /// The methods of every `strata.` service in an encoded descriptor set; an error names every
    /// method without a role.
    pub fn from_descriptor_set(bytes: &[u8]) -> Result<Self, String> {
        let pool = DescriptorPool::decode(bytes).map_err(|e| format!("descriptor set: {e}"))?;
        let ext = pool
            .get_extension_by_name(OPTION)
            .ok_or_else(|| format!("the descriptor set has no {OPTION} extension"))?;
        let mut by_path = HashMap::new();
        let mut missing = Vec::new();
        for service in pool.services().filter(|s| s.full_name().starts_with("strata.")) {
            for method in service.methods() {
                let path = format!("/{}/{}", service.full_name(), method.name());
                let options = method.options();
                let declared = options.has_extension(&ext).then(|| options.get_extension(&ext).into_owned());
                let Some(Value::Message(m)) = declared else {
                    missing.push(path);
                    continue;
                };
                let Some(role) = m.get_field_by_name("role").and_then(|v| v.as_enum_number()).and_then(auth_role)
                else {
                    missing.push(path);
                    continue;
                };
                let flag = |name: &str| m.get_field_by_name(name).and_then(|v| v.as_bool()).unwrap_or(false);
                let resources = match m.get_field_by_name("resources").as_deref() {
                    Some(Value::List(l)) => l.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
                    _ => Vec::new(),
                };
                for r in &resources {
                    if !field_path_exists(&method.input(), r) {
                        return Err(format!("{path}: resource {r:?} is not a field of {}", method.input().full_name()));
                    }
                }
                let rule = MethodRule {
                    role,
                    mutates: flag("mutates"),
                    resources,
                    scoped: flag("scoped"),
                    input: method.input(),
                    client_streaming: method.is_client_streaming(),
                    server_streaming: method.is_server_streaming(),
                };
                by_path.insert(path, Arc::new(rule));
            }
        }
        if !missing.is_empty() {
            missing.sort();
            return Err(format!("methods without a `({OPTION}).role`: {}", missing.join(", ")));
        }
        Ok(Self { by_path })
    }

    /// The declaration of the method at `path`.
    pub fn get(&self, path: &str) -> Option<&Arc<MethodRule>> {
        self.by_path.get(path)
    }

    /// Every method, by path.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &MethodRule)> {
        self.by_path.iter().map(|(p, r)| (p.as_str(), &**r))
    }
}

/// Whether `path` (`a.b`) names a field of `message`, through singular message fields.
fn field_path_exists(message: &MessageDescriptor, path: &str) -> bool {
    let mut m = message.clone();
    let mut parts = path.split('.').peekable();
    while let Some(name) = parts.next() {
        let Some(field) = m.get_field_by_name(name) else {
            return false;
        };
        if parts.peek().is_none() {
            return true;
        }
        match field.kind().as_message() {
            Some(inner) if !field.is_list() => m = inner.clone(),
            _ => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_declares_a_role() {
        let methods = Methods::load().expect("every method declares its role");
        // Every service the server registers is in the descriptor set, with all of its methods.
        let services: std::collections::BTreeSet<_> =
            methods.iter().map(|(p, _)| p.split('/').nth(1).unwrap()).collect();
        for name in crate::grpc::SERVICE_NAMES {
            assert!(services.contains(name), "{name} has no methods in the table");
        }
        let upload = methods.get("/strata.v1.FileService/Upload").unwrap();
        assert_eq!(upload.role, Role::Operator);
        assert!(upload.mutates && upload.scoped && upload.client_streaming);
        assert_eq!(upload.resources, ["resume.upload_id", "header.owner", "header.name"]);
        let get = methods.get("/strata.v1.StorageService/GetStorageMetrics").unwrap();
        assert_eq!(get.role, Role::Viewer);
        assert!(!get.mutates && !get.scoped && get.resources.is_empty());
        assert_eq!(methods.get("/strata.v1.SchedulerService/StopScheduler").unwrap().role, Role::Admin);
        // A viewer method never changes state: the audit trail relies on `mutates`.
        for (path, rule) in methods.iter() {
            assert!(!(rule.mutates && rule.role == Role::Viewer), "{path} mutates but is open to viewers");
        }
    }

    #[test]
    fn a_method_without_a_role_is_refused_by_name() {
        let load = |service: &str| {
            let dir = tempfile::tempdir().unwrap();
            let proto = format!(
                r#"syntax = "proto3";
                package strata.test;
                import "strata/v1/auth.proto";
                message M {{ string name = 1; }}
                service S {{ {service} }}"#
            );
            std::fs::write(dir.path().join("x.proto"), proto).unwrap();
            let mut c = protox::Compiler::new([dir.path(), std::path::Path::new("../proto")]).unwrap();
            c.include_imports(true).open_files(["x.proto"]).unwrap();
            Methods::from_descriptor_set(&c.encode_file_descriptor_set())
        };
        let declared =
            r#"rpc Declared(M) returns (M) { option (strata.v1.auth) = { role: ROLE_VIEWER, resources: "name" }; }"#;
        assert!(load(declared).unwrap().get("/strata.test.S/Declared").is_some());
        let err = load(&format!("{declared} rpc Forgotten(M) returns (M);")).unwrap_err();
        assert_eq!(err, "methods without a `(strata.v1.auth).role`: /strata.test.S/Forgotten");
        let err = load(r#"rpc R(M) returns (M) { option (strata.v1.auth) = { resources: "name" }; }"#).unwrap_err();
        assert_eq!(err, "methods without a `(strata.v1.auth).role`: /strata.test.S/R");
        let err = load(r#"rpc R(M) returns (M) { option (strata.v1.auth) = { role: ROLE_ADMIN, resources: "nme" }; }"#)
            .unwrap_err();
        assert_eq!(err, r#"/strata.test.S/R: resource "nme" is not a field of strata.test.M"#);
    }
}

/// The "Roles" table of `docs/api.md`, as the descriptor set declares it: one row per method, by
/// service and method name.
#[cfg(test)]
pub(crate) fn roles_table(methods: &Methods) -> String {
    let mut rows: Vec<_> = methods.iter().collect();
    rows.sort_by_key(|(p, _)| *p);
    let mut out =
        String::from("| method | role | audited | resource fields | scoped tokens |\n|---|---|---|---|---|\n");
    for (path, m) in rows {
        let role = format!("{:?}", m.role).to_lowercase();
        let resources = m.resources.iter().map(|r| format!("`{r}`")).collect::<Vec<_>>().join(", ");
        out += &format!(
            "| `{}` | {role} | {} | {resources} | {} |\n",
            path.trim_start_matches("/strata.v1."),
            if m.mutates { "yes" } else { "" },
            if m.scoped { "yes" } else { "" }
        );
    }
    out
}

#[cfg(test)]
mod docs {
    use super::*;

    /// `docs/api.md` lists every method's declared role in its "Roles" section, and every other
    /// table there that names a method with a role gives the declared one.
    #[test]
    fn api_md_lists_the_declared_roles() {
        let methods = Methods::load().unwrap();
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/api.md")).unwrap();
        let expected = roles_table(&methods);
        assert!(
            doc.contains(&expected),
            "docs/api.md's \"Roles\" section must hold exactly this table (from proto/):\n\n{expected}"
        );
        // Other tables: a row naming methods (in backticks) and a role cell.
        let by_name: HashMap<&str, Vec<Role>> = methods.iter().fold(HashMap::new(), |mut m, (p, r)| {
            m.entry(p.rsplit('/').next().unwrap()).or_default().push(r.role);
            m
        });
        for line in doc.lines().filter(|l| l.starts_with('|') && !doc_roles_row(l)) {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let Some(role) = cells.iter().find_map(|c| match *c {
                "viewer" => Some(Role::Viewer),
                "operator" => Some(Role::Operator),
                "admin" => Some(Role::Admin),
                _ => None,
            }) else {
                continue;
            };
            for name in cells.iter().take(3).flat_map(|c| c.split('`').skip(1).step_by(2)) {
                if let Some(roles) = by_name.get(name) {
                    assert!(
                        roles.contains(&role),
                        "docs/api.md: {name} is {role:?} in {line:?}; proto/ declares {roles:?}"
                    );
                }
            }
        }
    }

    /// A row of the generated table (`| \`Service/Method\` | …`).
    fn doc_roles_row(line: &str) -> bool {
        line.split('|').nth(1).is_some_and(|c| c.trim().starts_with('`') && c.contains("Service/"))
    }
}
