//! S3's XML: a writer for the response documents and a reader for the few request
//! bodies atrest takes (bucket encryption, bucket location). The reader is a
//! deliberately small one: it finds elements by name in a document of bounded size
//! and never panics on what a peer sends.

use std::fmt::Write as _;

use crate::error::GatewayError;

/// The namespace of every S3 document.
pub(crate) const NAMESPACE: &str = "http://s3.amazonaws.com/doc/2006-03-01/";

/// Builds one XML document, element by element.
#[derive(Debug)]
pub(crate) struct XmlWriter {
    out: String,
}

impl XmlWriter {
    /// A document whose root element `root` carries S3's namespace.
    pub(crate) fn new(root: &str) -> XmlWriter {
        let mut out = String::with_capacity(512);
        out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = write!(out, "<{root} xmlns=\"{NAMESPACE}\">");
        XmlWriter { out }
    }

    /// A document whose root element has no namespace (S3's `<Error>`).
    pub(crate) fn bare(root: &str) -> XmlWriter {
        let mut out = String::with_capacity(256);
        out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = write!(out, "<{root}>");
        XmlWriter { out }
    }

    pub(crate) fn open(&mut self, tag: &str) -> &mut Self {
        let _ = write!(self.out, "<{tag}>");
        self
    }

    /// Opens an element with attributes written as given (trusted, constant text).
    pub(crate) fn open_with(&mut self, tag: &str, attributes: &str) -> &mut Self {
        let _ = write!(self.out, "<{tag} {attributes}>");
        self
    }

    pub(crate) fn close(&mut self, tag: &str) -> &mut Self {
        let _ = write!(self.out, "</{tag}>");
        self
    }

    /// `<tag>text</tag>`, the text escaped.
    pub(crate) fn leaf(&mut self, tag: &str, text: &str) -> &mut Self {
        let _ = write!(self.out, "<{tag}>");
        escape_into(&mut self.out, text);
        let _ = write!(self.out, "</{tag}>");
        self
    }

    /// Text inside the element open last, escaped.
    pub(crate) fn text(&mut self, text: &str) -> &mut Self {
        escape_into(&mut self.out, text);
        self
    }

    /// Closes the root and returns the document.
    pub(crate) fn finish(mut self, root: &str) -> Vec<u8> {
        let _ = write!(self.out, "</{root}>");
        self.out.into_bytes()
    }
}

/// Escapes the five XML specials, and writes control characters as character
/// references (S3 does the same; clients that want them safe ask for
/// `encoding-type=url`).
fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() => {
                let _ = write!(out, "&#x{:X};", u32::from(c));
            }
            c => out.push(c),
        }
    }
}

/// A request body parsed just enough to read elements by name.
#[derive(Debug)]
pub struct XmlDocument<'a> {
    text: &'a str,
}

impl<'a> XmlDocument<'a> {
    /// Checks that `body` is UTF-8 and that its root element is `root` (any
    /// namespace prefix or attributes allowed).
    pub fn parse(body: &'a [u8], root: &str) -> Result<XmlDocument<'a>, GatewayError> {
        let malformed = || {
            GatewayError::MalformedXml(
                "The XML you provided was not well-formed or did not validate against our \
                 published schema"
                    .into(),
            )
        };
        let text = std::str::from_utf8(body).map_err(|_| malformed())?;
        let mut rest = text.trim_start_matches('\u{feff}').trim_start();
        // Skip the declaration and comments before the root.
        loop {
            if let Some(after) = rest.strip_prefix("<?") {
                rest = after.split_once("?>").ok_or_else(malformed)?.1.trim_start();
            } else if let Some(after) = rest.strip_prefix("<!--") {
                rest = after
                    .split_once("-->")
                    .ok_or_else(malformed)?
                    .1
                    .trim_start();
            } else {
                break;
            }
        }
        let name = rest
            .strip_prefix('<')
            .and_then(|r| {
                r.split(|c: char| c == '>' || c == '/' || c.is_whitespace())
                    .next()
            })
            .ok_or_else(malformed)?;
        let local = name.rsplit(':').next().unwrap_or(name);
        if local != root {
            return Err(GatewayError::MalformedXml(format!(
                "the body's root element must be {root}"
            )));
        }
        let closes = rest.trim_end().ends_with('>')
            && (rest.contains(&format!("</{name}>")) || rest.trim_end().ends_with("/>"));
        if !closes {
            return Err(malformed());
        }
        Ok(XmlDocument { text: rest })
    }

    /// The text of every `<tag>...</tag>` element, in document order, entities
    /// decoded.
    pub fn all(&self, tag: &str) -> Result<Vec<String>, GatewayError> {
        let open = format!("<{tag}>");
        let close = format!("</{tag}>");
        let mut found = Vec::new();
        let mut rest = self.text;
        while let Some(start) = rest.find(&open) {
            let after = &rest[start + open.len()..];
            let end = after.find(&close).ok_or_else(|| {
                GatewayError::MalformedXml(format!("the element {tag} is not closed"))
            })?;
            found.push(unescape(&after[..end])?);
            rest = &after[end + close.len()..];
        }
        Ok(found)
    }

    /// The inside of every `<tag>...</tag>` element (markup kept), in document order,
    /// each readable as a document of its own. `tag` must not nest in itself.
    pub fn children(&self, tag: &str) -> Result<Vec<XmlDocument<'a>>, GatewayError> {
        let open = format!("<{tag}>");
        let close = format!("</{tag}>");
        let mut found = Vec::new();
        let mut rest = self.text;
        while let Some(start) = rest.find(&open) {
            let after = &rest[start + open.len()..];
            let end = after.find(&close).ok_or_else(|| {
                GatewayError::MalformedXml(format!("the element {tag} is not closed"))
            })?;
            found.push(XmlDocument {
                text: &after[..end],
            });
            rest = &after[end + close.len()..];
        }
        Ok(found)
    }

    /// The local name of every element opened in the document (`<a>`, `<a/>`,
    /// `<p:a x="1">`), in document order.
    pub fn element_names(&self) -> Vec<&'a str> {
        let mut names = Vec::new();
        let mut rest = self.text;
        while let Some(start) = rest.find('<') {
            rest = &rest[start + 1..];
            if rest.starts_with(['/', '?', '!']) {
                continue;
            }
            let name = rest
                .split(|c: char| c == '>' || c == '/' || c.is_whitespace())
                .next()
                .unwrap_or("");
            names.push(name.rsplit(':').next().unwrap_or(name));
        }
        names
    }

    /// The text of the one `<tag>` element, if any; two are an error.
    pub fn get(&self, tag: &str) -> Result<Option<String>, GatewayError> {
        let mut all = self.all(tag)?;
        match all.len() {
            0 => Ok(None),
            1 => Ok(all.pop()),
            _ => Err(GatewayError::MalformedXml(format!(
                "the element {tag} appears more than once"
            ))),
        }
    }
}

fn unescape(text: &str) -> Result<String, GatewayError> {
    let bad = || GatewayError::MalformedXml("the XML holds an invalid entity reference".into());
    if text.contains('<') {
        return Err(GatewayError::MalformedXml(
            "an element expected to hold text holds markup".into(),
        ));
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let semi = after.find(';').filter(|&i| i <= 10).ok_or_else(bad)?;
        let entity = &after[..semi];
        let c = match entity {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = if let Some(hex) = entity.strip_prefix("#x") {
                    u32::from_str_radix(hex, 16).ok()
                } else if let Some(dec) = entity.strip_prefix('#') {
                    dec.parse::<u32>().ok()
                } else {
                    None
                };
                code.and_then(char::from_u32).ok_or_else(bad)?
            }
        };
        out.push(c);
        rest = &after[semi + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_escapes_text() {
        let mut w = XmlWriter::new("R");
        w.leaf("Key", "a<b&c>\"d'\u{1}");
        let doc = String::from_utf8(w.finish("R")).unwrap();
        assert!(doc.contains("<Key>a&lt;b&amp;c&gt;&quot;d&apos;&#x1;</Key>"));
        assert!(doc.contains(NAMESPACE));
    }

    #[test]
    fn reader_finds_elements_and_refuses_garbage() {
        let body = br#"<?xml version="1.0" encoding="UTF-8"?>
<ServerSideEncryptionConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
<Rule><ApplyServerSideEncryptionByDefault><SSEAlgorithm>aws:kms</SSEAlgorithm>
<KMSMasterKeyID>alias/a&amp;b</KMSMasterKeyID></ApplyServerSideEncryptionByDefault>
<BucketKeyEnabled>true</BucketKeyEnabled></Rule></ServerSideEncryptionConfiguration>"#;
        let doc = XmlDocument::parse(body, "ServerSideEncryptionConfiguration").unwrap();
        assert_eq!(doc.get("SSEAlgorithm").unwrap().as_deref(), Some("aws:kms"));
        assert_eq!(
            doc.get("KMSMasterKeyID").unwrap().as_deref(),
            Some("alias/a&b")
        );
        assert_eq!(doc.get("Missing").unwrap(), None);
        for bad in [
            &b""[..],
            b"<Other/>",
            b"<ServerSideEncryptionConfiguration>",
            b"\xff\xfe",
            b"<?xml",
        ] {
            assert!(
                XmlDocument::parse(bad, "ServerSideEncryptionConfiguration").is_err(),
                "{bad:?}"
            );
        }
        let doc = XmlDocument::parse(b"<R><A>&bogus;</A><B>x</B><B>y</B><C>1", "R");
        assert!(doc.is_err());
        let doc = XmlDocument::parse(b"<R><A>&bogus;</A><B>x</B><B>y</B></R>", "R").unwrap();
        assert!(doc.get("A").is_err());
        assert!(doc.get("B").is_err());
        assert_eq!(doc.all("B").unwrap(), ["x", "y"]);
    }
}
