//! Reading resource files (`-f FILE|DIR|-`) and decoding them, with errors that name the file,
//! the document and the field.

use std::io::Read;
use std::path::Path;

use margay_api::{decode, parse_documents, set_default_namespace, Resource};
use serde_json::Value;

use crate::{CtlError, Result};

/// One document and where it came from.
#[derive(Debug, Clone)]
pub struct SourceDoc {
    /// File path, or `<stdin>`.
    pub origin: String,
    /// 1-based position among the documents of that file.
    pub index: usize,
    pub value: Value,
}

impl SourceDoc {
    fn context(&self) -> String {
        format!(
            "{}: document {} ({})",
            self.origin,
            self.index,
            margay_api::document::describe_document(&self.value)
        )
    }
}

/// Reads every document of every path; a directory contributes its `.yaml`, `.yml` and
/// `.json` files in name order; `-` is standard input.
pub fn read_sources(paths: &[String]) -> Result<Vec<SourceDoc>> {
    let mut docs = Vec::new();
    for path in paths {
        if path == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| input_error("<stdin>", e.to_string()))?;
            docs.extend(split("<stdin>", &text)?);
            continue;
        }
        let p = Path::new(path);
        if p.is_dir() {
            let mut files: Vec<_> = std::fs::read_dir(p)
                .map_err(|e| input_error(path, e.to_string()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    matches!(
                        f.extension().and_then(|e| e.to_str()),
                        Some("yaml" | "yml" | "json")
                    )
                })
                .collect();
            files.sort();
            for f in files {
                docs.extend(read_file(&f.display().to_string())?);
            }
        } else {
            docs.extend(read_file(path)?);
        }
    }
    Ok(docs)
}

fn read_file(path: &str) -> Result<Vec<SourceDoc>> {
    let text = std::fs::read_to_string(path).map_err(|e| input_error(path, e.to_string()))?;
    split(path, &text)
}

fn split(origin: &str, text: &str) -> Result<Vec<SourceDoc>> {
    let values = parse_documents(text).map_err(|e| input_error(origin, e))?;
    if values.is_empty() {
        return Err(input_error(origin, "no documents found".into()));
    }
    Ok(values
        .into_iter()
        .enumerate()
        .map(|(i, value)| SourceDoc {
            origin: origin.to_owned(),
            index: i + 1,
            value,
        })
        .collect())
}

fn input_error(origin: &str, message: String) -> CtlError {
    CtlError::Input {
        origin: origin.to_owned(),
        message,
    }
}

/// Decodes every document; the first bad one fails the whole set. Returns the resources and
/// the migration warnings.
pub fn decode_all(docs: &[SourceDoc], namespace: &str) -> Result<(Vec<Resource>, Vec<String>)> {
    let mut resources = Vec::with_capacity(docs.len());
    let mut warnings = Vec::new();
    for doc in docs {
        let mut value = doc.value.clone();
        set_default_namespace(&mut value, namespace);
        let decoded = decode(value).map_err(|e| input_error(&doc.context(), e.to_string()))?;
        warnings.extend(decoded.warnings);
        resources.push(decoded.resource);
    }
    Ok((resources, warnings))
}

/// Names the document behind item `index` of a decoded batch.
pub fn context_of(docs: &[SourceDoc], index: usize) -> String {
    docs.get(index)
        .map(SourceDoc::context)
        .unwrap_or_else(|| format!("item {}", index + 1))
}
