//! EC2's XML both ways: a small element tree read with quick-xml (bounded), a writer, and the
//! traits that map our types to elements (`<imagesSet><item>...</item></imagesSet>` lists).

use quick_xml::events::Event;

/// Largest XML document parsed (a DescribeImages page of 1000 images is a few MiB).
pub const MAX_XML_LEN: usize = 64 << 20;
/// Deepest element nesting accepted (EC2 responses nest fewer than 15 levels).
pub const MAX_DEPTH: usize = 64;
/// Most elements in one document.
pub const MAX_NODES: usize = 4_000_000;

/// One element: its local name (without namespace prefix), its text and its child elements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    /// The local name.
    pub name: String,
    /// The element's text (concatenated, unescaped).
    pub text: String,
    /// Child elements in document order.
    pub children: Vec<Node>,
}

impl Node {
    /// The first child named `name`.
    pub fn child(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name == name)
    }
}

/// Parses `xml` into its root element. Errors name the byte offset.
pub fn parse(xml: &str) -> Result<Node, String> {
    if xml.len() > MAX_XML_LEN {
        return Err(format!(
            "document of {} bytes is larger than {MAX_XML_LEN}",
            xml.len()
        ));
    }
    let mut reader = quick_xml::Reader::from_str(xml);
    // Text is kept exactly (a name may start or end with a space); whitespace between
    // elements lands in a structure's text, which nobody reads.
    reader.config_mut().trim_text(false);
    let mut stack: Vec<Node> = Vec::new();
    let mut root: Option<Node> = None;
    let mut nodes = 0usize;
    loop {
        let pos = reader.buffer_position();
        let ev = reader
            .read_event()
            .map_err(|e| format!("at byte {pos:#x}: {e}"))?;
        match ev {
            Event::Start(e) | Event::Empty(e) if root.is_some() => {
                let _ = e;
                return Err(format!("at byte {pos:#x}: content after the root element"));
            }
            Event::Start(e) => {
                nodes += 1;
                if nodes > MAX_NODES || stack.len() >= MAX_DEPTH {
                    return Err(format!(
                        "at byte {pos:#x}: more than {MAX_NODES} elements or deeper than {MAX_DEPTH}"
                    ));
                }
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                stack.push(Node {
                    name,
                    ..Node::default()
                });
            }
            Event::Empty(e) => {
                nodes += 1;
                if nodes > MAX_NODES {
                    return Err(format!("at byte {pos:#x}: more than {MAX_NODES} elements"));
                }
                let node = Node {
                    name: String::from_utf8_lossy(e.local_name().as_ref()).into_owned(),
                    ..Node::default()
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None => root = Some(node),
                }
            }
            Event::End(_) => {
                let node = stack
                    .pop()
                    .ok_or_else(|| format!("at byte {pos:#x}: unmatched end tag"))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None => root = Some(node),
                }
            }
            Event::Text(t) => {
                let text = t.unescape().map_err(|e| format!("at byte {pos:#x}: {e}"))?;
                match stack.last_mut() {
                    Some(n) => n.text.push_str(&text),
                    None if text.trim().is_empty() => {}
                    None => return Err(format!("at byte {pos:#x}: text outside the root element")),
                }
            }
            Event::CData(c) => {
                let text = String::from_utf8_lossy(&c).into_owned();
                match stack.last_mut() {
                    Some(n) => n.text.push_str(&text),
                    None => {
                        return Err(format!("at byte {pos:#x}: CDATA outside the root element"));
                    }
                }
            }
            Event::Eof => break,
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_) => {}
        }
    }
    if !stack.is_empty() {
        return Err(format!(
            "unexpected end of document inside <{}>",
            stack.last().map_or("", |n| n.name.as_str())
        ));
    }
    root.ok_or_else(|| "no root element".to_string())
}

/// XML being written.
#[derive(Debug, Default)]
pub struct XmlWriter {
    /// The document so far.
    pub out: String,
}

impl XmlWriter {
    /// Opens `<name>`.
    pub fn open(&mut self, name: &str) {
        self.out.push('<');
        self.out.push_str(name);
        self.out.push('>');
    }
    /// Closes `</name>`.
    pub fn close(&mut self, name: &str) {
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push('>');
    }
    /// Writes `<name>text</name>` with the text escaped.
    pub fn leaf(&mut self, name: &str, text: &str) {
        self.open(name);
        self.out.push_str(&quick_xml::escape::escape(text));
        self.close(name);
    }
}

/// A value that is one element: text (`String`, `bool`, `i64`) or a structure.
pub trait XmlValue: Sized {
    /// Writes the value as the element `name`.
    fn write_xml(&self, name: &str, w: &mut XmlWriter);
    /// Reads the value from its element.
    fn read_xml(node: &Node) -> Result<Self, String>;
}

impl XmlValue for String {
    fn write_xml(&self, name: &str, w: &mut XmlWriter) {
        w.leaf(name, self);
    }
    fn read_xml(node: &Node) -> Result<Self, String> {
        Ok(node.text.clone())
    }
}

impl XmlValue for bool {
    fn write_xml(&self, name: &str, w: &mut XmlWriter) {
        w.leaf(name, if *self { "true" } else { "false" });
    }
    fn read_xml(node: &Node) -> Result<Self, String> {
        match node.text.trim() {
            "true" => Ok(true),
            "false" => Ok(false),
            t => Err(format!("<{}>: {t:.64} is not true or false", node.name)),
        }
    }
}

impl XmlValue for i64 {
    fn write_xml(&self, name: &str, w: &mut XmlWriter) {
        w.leaf(name, &self.to_string());
    }
    fn read_xml(node: &Node) -> Result<Self, String> {
        node.text
            .trim()
            .parse()
            .map_err(|_| format!("<{}>: {:.64} is not an integer", node.name, node.text))
    }
}

/// A field of a response: required (`T`), optional (`Option<T>`) or a list (`Vec<T>` as
/// `<name><item>...</item></name>`).
pub trait XmlField: Sized {
    /// Writes the field as the element `name`.
    fn write_field(&self, name: &str, w: &mut XmlWriter);
    /// Reads the field from `parent`'s child `name`.
    fn read_field(parent: &Node, name: &str) -> Result<Self, String>;
}

macro_rules! required_xml_field {
    ($($t:ty),*) => {$(
        impl $crate::ec2::XmlField for $t {
            fn write_field(&self, name: &str, w: &mut $crate::ec2::XmlWriter) {
                <$t as $crate::ec2::XmlValue>::write_xml(self, name, w);
            }
            fn read_field(parent: &$crate::ec2::Node, name: &str) -> Result<Self, String> {
                match parent.child(name) {
                    Some(n) => <$t as $crate::ec2::XmlValue>::read_xml(n),
                    None => Err(format!("<{}> has no <{name}>", parent.name)),
                }
            }
        }
    )*};
}
required_xml_field!(String, bool, i64);
pub(crate) use required_xml_field;

impl<T: XmlValue> XmlField for Option<T> {
    fn write_field(&self, name: &str, w: &mut XmlWriter) {
        if let Some(v) = self {
            v.write_xml(name, w);
        }
    }
    fn read_field(parent: &Node, name: &str) -> Result<Self, String> {
        parent.child(name).map(T::read_xml).transpose()
    }
}

impl<T: XmlValue> XmlField for Vec<T> {
    fn write_field(&self, name: &str, w: &mut XmlWriter) {
        // Written even when empty (`<imagesSet/>`-like), as AWS does: clients then see `[]`.
        w.open(name);
        for v in self {
            v.write_xml("item", w);
        }
        w.close(name);
    }
    fn read_field(parent: &Node, name: &str) -> Result<Self, String> {
        match parent.child(name) {
            None => Ok(Vec::new()),
            Some(list) => list
                .children
                .iter()
                .filter(|c| c.name == "item")
                .map(T::read_xml)
                .collect(),
        }
    }
}
