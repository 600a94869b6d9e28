//! Re-encoding a parsed NAR. Because the reader only accepts the canonical encoding, this is
//! the identity on every NAR it accepts; the codec tests and the fuzz target rely on that.

use tokio::io::{AsyncRead, AsyncWrite};

use super::{NarEvent, NarReadError, NarReader, NarWriteError, NarWriter};

/// Failure of [`transcode`]: either side.
#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    /// The input is not a valid NAR.
    #[error(transparent)]
    Read(#[from] NarReadError),
    /// Writing the output failed.
    #[error(transparent)]
    Write(#[from] NarWriteError),
}

/// Streams every node of `src` into `dst` and finishes `dst`.
pub async fn transcode<R, W>(src: R, dst: W) -> Result<W, TranscodeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut reader = NarReader::new(src);
    let mut writer = NarWriter::new(dst).await?;
    while let Some(event) = reader.next().await? {
        match event {
            NarEvent::File { name, executable, size } => {
                let offset = reader.position();
                let res = writer.file(name.as_deref(), executable, size, &mut reader.contents()).await;
                match res {
                    Err(NarWriteError::ContentsRead { source, .. }) => {
                        return Err(NarReadError::from_io(source, offset).into());
                    }
                    other => other?,
                }
            }
            NarEvent::Symlink { name, target } => writer.symlink(name.as_deref(), &target).await?,
            NarEvent::DirectoryStart { name } => writer.directory_start(name.as_deref()).await?,
            NarEvent::DirectoryEnd => writer.directory_end().await?,
        }
    }
    Ok(writer.finish().await?)
}
