//! Field-level validation helpers. Every problem names the field path it was found at, so the
//! CLI can print `file: document N (Kind name): spec.blockSize: ...` on one line.

use std::fmt;

use ipnet::IpNet;

/// One validation problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Problems collected while validating one object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Errors(pub Vec<FieldError>);

impl Errors {
    pub fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn first(&self) -> Option<&FieldError> {
        self.0.first()
    }

    pub fn into_result(self) -> Result<(), FieldError> {
        match self.0.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Calico accepts lower-case DNS subdomain names with dots (e.g. `default.allow-dns`).
pub fn resource_name(field: &str, name: &str, errs: &mut Errors) {
    if name.len() > 253 {
        errs.add(field, format!("{name:?} is longer than 253 characters"));
        return;
    }
    let ok = name.split('.').all(|part| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
            && !part.starts_with('-')
            && !part.ends_with('-')
    });
    if !ok {
        errs.add(
            field,
            format!("{name:?} is not a valid name (lower-case letters, digits, '-', '_' and '.')"),
        );
    }
}

/// RFC 1123 label, as Kubernetes requires for namespaces.
pub fn dns_label(field: &str, value: &str, errs: &mut Errors) {
    if !is_dns_label(value) {
        errs.add(field, format!("{value:?} is not a valid DNS label"));
    }
}

/// RFC 1123 label: Kubernetes namespaces, Calico tier names and policy name parts.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Kubernetes `IsValidPortName` (IANA service name): what named container ports must be.
pub fn check_port_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid port name (at most 15 lower-case letters, digits and \
             single '-', with at least one letter)"
        ))
    }
}

/// Kubernetes label key (optional DNS prefix + `/` + name) and value rules.
pub fn label(field: &str, key: &str, value: &str, errs: &mut Errors) {
    let name = match key.rsplit_once('/') {
        Some((prefix, name)) => {
            if prefix.is_empty() || prefix.len() > 253 || !prefix.split('.').all(valid_dns_part) {
                errs.add(field, format!("label key {key:?} has an invalid prefix"));
                return;
            }
            name
        }
        None => key,
    };
    if !qualified_name(name) {
        errs.add(
            field,
            format!("label key {key:?} is not a valid label name"),
        );
    }
    if !value.is_empty() && !qualified_name(value) {
        errs.add(field, format!("label value {value:?} is not valid"));
    }
}

fn valid_dns_part(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= 63
        && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

fn qualified_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    !s.is_empty()
        && s.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// A selector field must parse; the error points at the column.
pub fn selector(field: &str, value: &str, errs: &mut Errors) {
    if let Err(e) = margay_selector::Selector::parse(value) {
        errs.add(field, format!("invalid selector {value:?}: {e}"));
    }
}

/// A CIDR must be in canonical (network) form, as Calico requires for pools and blocks.
pub fn canonical_cidr(field: &str, net: &IpNet, errs: &mut Errors) {
    if net.network() != net.addr() {
        errs.add(
            field,
            format!(
                "{net} is not a network address (did you mean {}?)",
                net.trunc()
            ),
        );
    }
}

/// Rejects a value outside `min..=max`.
pub fn range<T: PartialOrd + fmt::Display>(
    field: &str,
    value: T,
    min: T,
    max: T,
    errs: &mut Errors,
) {
    if value < min || value > max {
        errs.add(field, format!("{value} is out of range {min}-{max}"));
    }
}

/// Port numbers are 1-65535 (0 is never meaningful in a rule).
pub fn port(field: &str, value: u32, errs: &mut Errors) {
    range(field, value, 1, 65535, errs);
}
