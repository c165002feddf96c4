//! The codec of every gRPC method (build.rs names it in the generated service): prost's, with
//! three checks on the way in.
//!
//! - One message per call: every method is unary, and tonic reads on to the end of the stream
//!   after the first message (for trailers), decoding whatever else comes; a second message is
//!   refused rather than silently dropped.
//! - Before prost allocates anything, the message's repeated fields are counted ([`wire`]), so
//!   what it decodes into stays proportional to its size.
//! - A large message is checked and decoded off the async threads, which serve every connection.

use std::marker::PhantomData;

use bytes::Buf;
use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstCodec;

use super::pb;
use super::wire::{self, Schema, WireError};

/// Messages up to this size are decoded in place: handing them off costs more than decoding.
const INLINE_BYTES: usize = 64 << 10;

/// What [`wire::check`] counts in a request message.
pub trait Counted {
    /// The message's fields that decode into more memory than they take on the wire.
    const SCHEMA: &'static Schema = &wire::FLAT;
}

impl Counted for pb::ModelInferRequest {
    const SCHEMA: &'static Schema = &wire::INFER_REQUEST;
}

// The other requests have no repeated fields beyond the load request's parameters, which FLAT
// counts with every other field.
impl Counted for pb::ServerLiveRequest {}
impl Counted for pb::ServerReadyRequest {}
impl Counted for pb::ModelReadyRequest {}
impl Counted for pb::ServerMetadataRequest {}
impl Counted for pb::ModelMetadataRequest {}
impl Counted for pb::RepositoryModelLoadRequest {}
impl Counted for pb::RepositoryModelUnloadRequest {}
impl Counted for pb::RepositoryIndexRequest {}
impl Counted for pb::ModelStatisticsRequest {}

/// prost's codec with [`BoundedDecoder`] for requests.
pub struct BoundedCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for BoundedCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for BoundedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Counted + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = BoundedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        BoundedDecoder {
            messages: 0,
            _message: PhantomData,
        }
    }
}

/// Decodes the one message of a call (a decoder lives for one call).
pub struct BoundedDecoder<U> {
    messages: usize,
    _message: PhantomData<U>,
}

impl<U: Message + Default + Counted> Decoder for BoundedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.messages += 1;
        if self.messages > 1 {
            return Err(Status::invalid_argument(
                "the call sent more than one message; every method of this service takes one",
            ));
        }
        // The buffer's own bytes, not a copy.
        let bytes = buf.copy_to_bytes(buf.remaining());
        let decode = || {
            wire::check(&bytes, U::SCHEMA).map_err(|e| match e {
                WireError::TooMany(_) => Status::resource_exhausted(e.to_string()),
                WireError::Malformed(_) => Status::invalid_argument(e.to_string()),
            })?;
            U::decode(bytes.clone()).map_err(|e| {
                Status::invalid_argument(format!("the message is not a valid request: {e}"))
            })
        };
        off_async_threads(bytes.len(), decode).map(Some)
    }
}

/// Runs `work` on a `size`-byte message: in place when small, else with the async thread handed
/// over to the runtime's other tasks meanwhile (tokio's `block_in_place`, the synchronous form
/// of `spawn_blocking`, which a codec's synchronous `decode` needs).
fn off_async_threads<T>(size: usize, work: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let multi_thread = Handle::try_current().is_ok_and(|h| {
        // block_in_place needs a multi-threaded runtime (the server's is).
        h.runtime_flavor() == RuntimeFlavor::MultiThread
    });
    if size > INLINE_BYTES && multi_thread {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}
