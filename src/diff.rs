//! Is a live object already as desired? The steady state must cost no write, so each
//! reconcile compares the desired object with the cached live one before applying.
//!
//! The rule is "every field we set has that value in the live object": the API server adds
//! defaults and other managers add fields, and neither is a reason to write. Quantities are
//! compared by value because the API server rewrites them into canonical form (`0.5` → `500m`).

use serde_json::Value;

use crate::quantity::Quantity;

/// `true` when every field set in `desired` holds the same value in `live`.
pub fn is_subset(desired: &Value, live: &Value) -> bool {
    subset(desired, live, false)
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn subset(desired: &Value, live: &Value, quantities: bool) -> bool {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d.iter().all(|(k, dv)| {
            // Under `limits` and `requests` every value is a quantity.
            let q = quantities || k == "limits" || k == "requests";
            match l.get(k) {
                Some(lv) => subset(dv, lv, q),
                None => is_empty(dv),
            }
        }),
        (Value::Object(d), Value::Null) => d.is_empty(),
        (Value::Array(d), Value::Array(l)) => {
            d.len() == l.len() && d.iter().zip(l).all(|(dv, lv)| subset(dv, lv, false))
        }
        (Value::Array(d), Value::Null) => d.is_empty(),
        (Value::Object(d), _) if quantities => d.is_empty(),
        (d, l) if quantities => quantity_eq(d, l),
        (d, l) => d == l,
    }
}

fn quantity_eq(desired: &Value, live: &Value) -> bool {
    if desired == live {
        return true;
    }
    let parse = |v: &Value| match v {
        Value::String(s) => Quantity::parse(s),
        Value::Number(n) => Quantity::parse(&n.to_string()),
        _ => None,
    };
    matches!((parse(desired), parse(live)), (Some(a), Some(b)) if a == b)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::is_subset;

    #[test]
    fn defaults_and_foreign_fields_are_not_drift() {
        let desired = json!({"spec": {"replicas": 1, "ports": [{"name": "grpc", "port": 1}]}});
        let live = json!({"spec": {"replicas": 1, "strategy": {"type": "RollingUpdate"},
            "ports": [{"name": "grpc", "port": 1, "protocol": "TCP"}]}, "status": {}});
        assert!(is_subset(&desired, &live));
    }

    #[test]
    fn changed_or_missing_fields_are_drift() {
        let desired = json!({"spec": {"replicas": 2, "image": "a"}});
        assert!(!is_subset(
            &desired,
            &json!({"spec": {"replicas": 1, "image": "a"}})
        ));
        assert!(!is_subset(&desired, &json!({"spec": {"replicas": 2}})));
        assert!(!is_subset(&json!({"a": [1, 2]}), &json!({"a": [1]})));
        assert!(!is_subset(&json!({"a": [1]}), &json!({"a": [1, 2]})));
    }

    #[test]
    fn empty_desired_values_match_absent_live_ones() {
        assert!(is_subset(&json!({"a": {}, "b": [], "c": null}), &json!({})));
    }

    #[test]
    fn quantities_compare_by_value_only_under_resources() {
        let desired = json!({"resources": {"limits": {"cpu": "0.5", "memory": "1Gi"}}});
        let live = json!({"resources": {"limits": {"cpu": "500m", "memory": "1024Mi"}}});
        assert!(is_subset(&desired, &live));
        let live = json!({"resources": {"limits": {"cpu": "600m", "memory": "1Gi"}}});
        assert!(!is_subset(&desired, &live));
        // Outside resources a string is a string.
        assert!(!is_subset(&json!({"x": "0.5"}), &json!({"x": "500m"})));
    }
}
