pub async fn run(_c: crate::config::ServerConfig) -> anyhow::Result<()> {
    anyhow::bail!("todo")
}
