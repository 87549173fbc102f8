//! Satellite-link emulator (placeholder, being written).

#[derive(clap::Args, Debug, Clone)]
pub struct LinksimArgs {}

pub async fn run_cli(_args: LinksimArgs) -> anyhow::Result<()> {
    anyhow::bail!("linksim: not yet implemented")
}
