//! Output helpers shared by every command: sizes, times, tables and JSON.

use std::io::Write;

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;

/// A size in IEC units (`13 B`, `500.0 MiB`), the one size format of the CLI; negative for
/// shrinking sizes (a growth rate).
pub(super) fn bytes(n: i64) -> String {
    let size = bytesize::ByteSize::b(n.unsigned_abs()).display().iec();
    if n < 0 { format!("-{size}") } else { size.to_string() }
}

/// A table with the CLI's look and these column headers.
pub(super) fn table(headers: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(headers.iter().copied());
    t
}

/// A UTC time to the second, or `-`.
pub(super) fn when(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_else(|| "-".into())
}

/// `v` as pretty-printed JSON (`--json`).
pub(super) fn print_json<T: Serialize>(out: &mut dyn Write, v: &T) -> anyhow::Result<()> {
    writeln!(out, "{}", serde_json::to_string_pretty(v)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::bytes;

    #[test]
    fn sizes_in_iec_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(13), "13 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(524_288_000), "500.0 MiB");
        assert_eq!(bytes(270_553_174_016), "252.0 GiB");
        assert_eq!(bytes(-3 << 20), "-3.0 MiB");
    }
}
