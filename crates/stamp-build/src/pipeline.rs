//! The build pipeline: tree → recipe → boot files → GPT (ESP + root) → every output at once.
