//! Compose files read as `docker compose` reads them: YAML with merge keys, and `${…}`
//! interpolated in every value from the variables given (as a `.env` file would give them).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_yaml::Value;

/// The repository, where the compose files are.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// What `scripts/compose-env` puts in `.env` besides `API_KEYS`: a secret per name, here
/// made by `value`.
pub fn dot_env(value: impl Fn(&str) -> String) -> BTreeMap<String, String> {
    [
        "RESET_CODE_KEY",
        "POSTGRES_PASSWORD",
        "WORKER_DB_PASSWORD",
        "API_DB_PASSWORD",
        "NATS_API_PASSWORD",
        "NATS_WORKER_PASSWORD",
    ]
    .into_iter()
    .map(|name| (name.to_owned(), value(name)))
    .collect()
}

/// Interpolates `$$`, `$NAME`, `${NAME}`, `${NAME:-default}`, `${NAME-default}`,
/// `${NAME:?message}`, `${NAME?message}` and `${NAME:+other}` as compose does. An unset
/// required variable is an error carrying its message.
pub fn interpolate(raw: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = raw;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some(inner) = rest.strip_prefix('{') {
            let end = inner
                .find('}')
                .ok_or_else(|| format!("unclosed ${{ in {raw}"))?;
            out.push_str(&expand(&inner[..end], vars)?);
            rest = &inner[end + 1..];
        } else {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            out.push_str(vars.get(&rest[..len]).map_or("", String::as_str));
            rest = &rest[len..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn expand(expr: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let name_len = expr
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(expr.len());
    let (name, op) = expr.split_at(name_len);
    let value = vars.get(name);
    let set_nonempty = value.is_some_and(|v| !v.is_empty());
    let given = |v: &str| interpolate(v, vars);
    Ok(match op {
        "" => value.cloned().unwrap_or_default(),
        _ if op.starts_with(":-") => match set_nonempty {
            true => value.cloned().unwrap_or_default(),
            false => given(&op[2..])?,
        },
        _ if op.starts_with('-') => match value {
            Some(v) => v.clone(),
            None => given(&op[1..])?,
        },
        _ if op.starts_with(":?") => match set_nonempty {
            true => value.cloned().unwrap_or_default(),
            false => return Err(format!("{name}: {}", &op[2..])),
        },
        _ if op.starts_with('?') => match value {
            Some(v) => v.clone(),
            None => return Err(format!("{name}: {}", &op[1..])),
        },
        _ if op.starts_with(":+") => match set_nonempty {
            true => given(&op[2..])?,
            false => String::new(),
        },
        _ => return Err(format!("unsupported interpolation ${{{expr}}}")),
    })
}

/// The compose file at `path`, merged and interpolated.
pub fn load(path: &Path, vars: &BTreeMap<String, String>) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut value: Value = serde_yaml::from_str(&text).map_err(|e| e.to_string())?;
    value.apply_merge().map_err(|e| e.to_string())?;
    interpolate_all(&mut value, vars)?;
    Ok(value)
}

fn interpolate_all(value: &mut Value, vars: &BTreeMap<String, String>) -> Result<(), String> {
    match value {
        Value::String(s) => *s = interpolate(s, vars)?,
        Value::Sequence(items) => {
            for item in items {
                interpolate_all(item, vars)?;
            }
        }
        Value::Mapping(map) => {
            for (_, item) in map.iter_mut() {
                interpolate_all(item, vars)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// A scalar as compose passes it to a container: numbers and booleans as text.
pub fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

/// A service's `environment`, as a list of variables.
pub fn environment(compose: &Value, service: &str) -> Vec<(String, String)> {
    compose["services"][service]["environment"]
        .as_mapping()
        .map(|m| m.iter().map(|(k, v)| (scalar(k), scalar(v))).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation_follows_compose() {
        let vars: BTreeMap<String, String> = [("SET", "v"), ("EMPTY", "")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let i = |raw: &str| interpolate(raw, &vars);
        assert_eq!(i("a ${SET} $SET $$SET").as_deref(), Ok("a v v $SET"));
        assert_eq!(
            i("${EMPTY:-d} ${EMPTY-d} ${UNSET-d}").as_deref(),
            Ok("d  d")
        );
        assert_eq!(i("${SET:+x}${EMPTY:+y}").as_deref(), Ok("x"));
        assert_eq!(
            i("nats://api:${UNSET:?run scripts/compose-env first}@nats"),
            Err("UNSET: run scripts/compose-env first".to_owned())
        );
        assert_eq!(i("${SET:?m}").as_deref(), Ok("v"));
    }
}
