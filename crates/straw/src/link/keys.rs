//! Key files (placeholder, being written).

pub fn keygen_cli(_path: &std::path::Path) -> anyhow::Result<()> {
    anyhow::bail!("keygen: not yet implemented")
}
