//! libnftables in-process (`NftLib`): the same `nft -f` syntax and the same atomic transaction
//! as `NftCli`, run through `nft_run_cmd_from_buffer` on one `nft_ctx` kept for the transport's
//! life. It saves what every `nft` process pays: its start (~2.4 ms here) and, after a
//! transaction that deleted anything, the close of its netlink socket, which waits for the
//! kernel's deferred release of the deleted objects (an RCU grace period, ~10 ms here; measured
//! by `cargo bench --bench kernel`, BENCHMARKS.md).
//!
//! Invariants: the library is loaded with `dlopen("libnftables.so.1")` (the nftables package's
//! own library, which `nft` itself links), so kproxy has no link-time dependency and falls back
//! to the `netlink` transport when it is missing (`Nft::open`). One context per transport, used by one
//! thread at a time (`&mut self`); its netlink socket belongs to the network namespace it was
//! opened in, so an `in_netns` transport opens and uses its context only on threads inside that
//! namespace (libnftables reopens the socket in the caller's namespace after some errors).
//! Output and error messages are buffered and taken after every command, which also empties
//! them. Listing a table (adoption) goes to the `nft` command: its 220k-element parse then lives
//! and dies in a child process instead of in kproxy's heap.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::sync::OnceLock;

use super::elements::ElementBatch;
use super::listing::{Element, Shape};
use super::mixed::{NftNetlink, in_netns};
use super::transport::{NftCli, NftError, Transport};
use crate::model::IpFamily;

type CtxNew = unsafe extern "C" fn(u32) -> *mut c_void;
type CtxFree = unsafe extern "C" fn(*mut c_void);
type CtxSet = unsafe extern "C" fn(*mut c_void) -> c_int;
type CtxGet = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type RunCmd = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;

/// The libnftables functions kproxy calls (libnftables.h, stable since nftables 0.9).
struct Api {
    ctx_new: CtxNew,
    ctx_free: CtxFree,
    buffer_output: CtxSet,
    buffer_error: CtxSet,
    output_buffer: CtxGet,
    error_buffer: CtxGet,
    run_cmd: RunCmd,
}

const LIBRARY: &CStr = c"libnftables.so.1";

/// The loaded library, once per process (never unloaded); the reason when it cannot be.
fn api() -> Result<&'static Api, NftError> {
    static API: OnceLock<Result<Api, String>> = OnceLock::new();
    API.get_or_init(load)
        .as_ref()
        .map_err(|e| NftError::LibraryUnavailable(e.clone()))
}

fn load() -> Result<Api, String> {
    // SAFETY: dlopen with a NUL-terminated name; the handle is kept for the process's life.
    let handle = unsafe { libc::dlopen(LIBRARY.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        return Err(dl_error());
    }
    let sym = |name: &CStr| {
        // SAFETY: dlsym on a live handle with a NUL-terminated name.
        let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
        if p.is_null() { Err(dl_error()) } else { Ok(p) }
    };
    // SAFETY: each symbol is the libnftables function of that name, whose C signature is the
    // field's type (libnftables.h).
    unsafe {
        Ok(Api {
            ctx_new: std::mem::transmute::<*mut c_void, CtxNew>(sym(c"nft_ctx_new")?),
            ctx_free: std::mem::transmute::<*mut c_void, CtxFree>(sym(c"nft_ctx_free")?),
            buffer_output: std::mem::transmute::<*mut c_void, CtxSet>(sym(
                c"nft_ctx_buffer_output",
            )?),
            buffer_error: std::mem::transmute::<*mut c_void, CtxSet>(sym(c"nft_ctx_buffer_error")?),
            output_buffer: std::mem::transmute::<*mut c_void, CtxGet>(sym(
                c"nft_ctx_get_output_buffer",
            )?),
            error_buffer: std::mem::transmute::<*mut c_void, CtxGet>(sym(
                c"nft_ctx_get_error_buffer",
            )?),
            run_cmd: std::mem::transmute::<*mut c_void, RunCmd>(sym(c"nft_run_cmd_from_buffer")?),
        })
    }
}

fn dl_error() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated message valid until the next dl call.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        return format!("{LIBRARY:?} could not be loaded");
    }
    // SAFETY: non-null, NUL-terminated (above).
    unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
}

/// One libnftables context (see the module invariants).
struct Ctx {
    api: &'static Api,
    ptr: *mut c_void,
}

// SAFETY: a context is used by one thread at a time (every use goes through `&mut NftLib`), and
// libnftables keeps no thread-local state in it.
unsafe impl Send for Ctx {}

impl Ctx {
    fn new() -> Result<Ctx, NftError> {
        let api = api()?;
        // SAFETY: nft_ctx_new(NFT_CTX_DEFAULT) has no preconditions.
        let ptr = unsafe { (api.ctx_new)(0) };
        if ptr.is_null() {
            return Err(NftError::LibraryUnavailable("nft_ctx_new failed".into()));
        }
        // SAFETY: a live context.
        let buffered = unsafe { (api.buffer_output)(ptr) == 0 && (api.buffer_error)(ptr) == 0 };
        let ctx = Ctx { api, ptr };
        if !buffered {
            return Err(NftError::LibraryUnavailable(
                "libnftables cannot buffer its output".into(),
            ));
        }
        Ok(ctx)
    }

    /// Runs `script` as one transaction: Ok(output) or Err(error text).
    fn run(&mut self, script: &str) -> Result<Result<String, String>, NftError> {
        let text = CString::new(script)
            .map_err(|_| NftError::Injected("a NUL byte in an nft script".into()))?;
        // SAFETY: a live context and a NUL-terminated script; the buffers are read right after,
        // before any other call on this context, as libnftables requires.
        let (rc, out, err) = unsafe {
            let rc = (self.api.run_cmd)(self.ptr, text.as_ptr());
            (
                rc,
                take(self.api.output_buffer, self.ptr),
                take(self.api.error_buffer, self.ptr),
            )
        };
        Ok(if rc == 0 { Ok(out) } else { Err(err) })
    }
}

/// The text of an output or error buffer (which the call also empties).
///
/// # Safety
/// `ctx` must be a live context with that buffer enabled.
unsafe fn take(get: CtxGet, ctx: *mut c_void) -> String {
    // SAFETY: per the caller; the pointer is NULL or a NUL-terminated buffer of `ctx`.
    let p = unsafe { get(ctx) };
    if p.is_null() {
        return String::new();
    }
    // SAFETY: non-null, NUL-terminated, valid until the next call on `ctx`.
    unsafe { CStr::from_ptr(p) }
        .to_string_lossy()
        .trim()
        .to_string()
}

impl Drop for Ctx {
    fn drop(&mut self) {
        // SAFETY: a live context, freed once.
        unsafe { (self.api.ctx_free)(self.ptr) }
    }
}

/// The libnftables transport (see the module invariants).
pub struct NftLib {
    ctx: Option<Ctx>,
    /// Everything but scripts: element batches and reads over netlink, set listings and the
    /// drift probe; and the namespace of the context.
    net: NftNetlink,
}

impl NftLib {
    /// A context in this process's network namespace, or why the library cannot be used.
    pub fn open() -> Result<NftLib, NftError> {
        NftLib::with(NftCli::default())
    }

    /// A context inside the named network namespace (for tests).
    pub fn in_netns(name: &str) -> Result<NftLib, NftError> {
        NftLib::with(NftCli::in_netns(name))
    }

    fn with(cli: NftCli) -> Result<NftLib, NftError> {
        let mut lib = NftLib {
            ctx: None,
            net: NftNetlink::with(cli),
        };
        let ctx = lib.on_ns_thread(|_| Ctx::new())??;
        lib.ctx = Some(ctx);
        Ok(lib)
    }

    /// Runs `f` with the context on a thread inside the transport's namespace (this thread when
    /// it has none: kproxy itself runs inside the node's namespace).
    fn on_ns_thread<T: Send>(
        &mut self,
        f: impl FnOnce(&mut Option<Ctx>) -> T + Send,
    ) -> Result<T, NftError> {
        let ctx = &mut self.ctx;
        in_netns(self.net.cli.netns.as_deref(), || f(ctx))
    }
}

impl Transport for NftLib {
    fn apply(&mut self, script: &str) -> Result<(), NftError> {
        let outcome = self.on_ns_thread(|ctx| match ctx {
            Some(ctx) => ctx.run(script),
            None => Err(NftError::LibraryUnavailable("no context".into())),
        })??;
        outcome
            .map(|_| ())
            .map_err(|stderr| NftError::ApplyRefused {
                status: "libnftables".into(),
                stderr,
            })
    }

    fn sends_element_batches(&self) -> bool {
        true
    }

    fn apply_elements(&mut self, batch: ElementBatch) -> Result<(), NftError> {
        self.net.apply_elements(batch)
    }

    fn list_table(&mut self, family: IpFamily, table: &str) -> Result<Option<String>, NftError> {
        self.net.list_table(family, table)
    }

    fn read_table(
        &mut self,
        family: IpFamily,
        table: &str,
        each: &mut (dyn FnMut(&str, Element<'_>) + Send),
    ) -> Option<Result<Shape, NftError>> {
        self.net.read_table(family, table, each)
    }

    fn read_set(
        &mut self,
        family: IpFamily,
        table: &str,
        set: &str,
        each: &mut (dyn FnMut(Element<'_>) + Send),
    ) -> Option<Result<bool, NftError>> {
        self.net.read_set(family, table, set, each)
    }

    fn list_set(
        &mut self,
        family: IpFamily,
        table: &str,
        set: &str,
    ) -> Result<Option<String>, NftError> {
        self.net.list_set(family, table, set)
    }

    fn rule_counts(
        &mut self,
        family: IpFamily,
        table: &str,
    ) -> Result<BTreeMap<String, usize>, NftError> {
        self.net.rule_counts(family, table)
    }
}

/// How nftables mode (and IPVS mode's companion table) reaches the kernel:
/// `--nftables-transport`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NftTransport {
    /// libnftables in-process for scripts, kproxy's netlink for elements and reads.
    #[default]
    Library,
    /// The `nft` command for scripts, kproxy's netlink for elements and reads.
    Netlink,
    /// The `nft` command for everything.
    Command,
}

/// The transport kproxy uses (`--nftables-transport`).
pub enum Nft {
    /// libnftables in-process for scripts; elements and reads over netlink.
    Lib(NftLib),
    /// The `nft` command for scripts; elements and reads over netlink.
    Netlink(NftNetlink),
    /// The `nft` command for everything.
    Cli(NftCli),
}

impl Nft {
    /// The transport `choice` names; `library` falls back to `netlink` when libnftables cannot
    /// be used (and says why, once).
    pub fn open(choice: NftTransport) -> Nft {
        match choice {
            NftTransport::Command => Nft::Cli(NftCli::default()),
            NftTransport::Netlink => Nft::Netlink(NftNetlink::default()),
            NftTransport::Library => match NftLib::open() {
                Ok(lib) => Nft::Lib(lib),
                Err(error) => {
                    tracing::info!(%error, "libnftables unavailable: programming nftables through the nft command, elements over netlink");
                    Nft::Netlink(NftNetlink::default())
                }
            },
        }
    }

    /// The `nft` command when `command` is set, else libnftables (see `open`).
    pub fn detect(command: bool) -> Nft {
        Nft::open(if command {
            NftTransport::Command
        } else {
            NftTransport::Library
        })
    }

    /// Which transport this is, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Nft::Lib(_) => "libnftables",
            Nft::Netlink(_) => "nft command, elements over netlink",
            Nft::Cli(_) => "nft command",
        }
    }

    fn inner(&mut self) -> &mut dyn Transport {
        match self {
            Nft::Lib(t) => t,
            Nft::Netlink(t) => t,
            Nft::Cli(t) => t,
        }
    }
}

impl Transport for Nft {
    fn apply(&mut self, script: &str) -> Result<(), NftError> {
        self.inner().apply(script)
    }

    fn sends_element_batches(&self) -> bool {
        !matches!(self, Nft::Cli(_))
    }

    fn apply_elements(&mut self, batch: ElementBatch) -> Result<(), NftError> {
        self.inner().apply_elements(batch)
    }

    fn list_table(&mut self, family: IpFamily, table: &str) -> Result<Option<String>, NftError> {
        self.inner().list_table(family, table)
    }

    fn read_table(
        &mut self,
        family: IpFamily,
        table: &str,
        each: &mut (dyn FnMut(&str, Element<'_>) + Send),
    ) -> Option<Result<Shape, NftError>> {
        self.inner().read_table(family, table, each)
    }

    fn read_set(
        &mut self,
        family: IpFamily,
        table: &str,
        set: &str,
        each: &mut (dyn FnMut(Element<'_>) + Send),
    ) -> Option<Result<bool, NftError>> {
        self.inner().read_set(family, table, set, each)
    }

    fn list_set(
        &mut self,
        family: IpFamily,
        table: &str,
        set: &str,
    ) -> Result<Option<String>, NftError> {
        self.inner().list_set(family, table, set)
    }

    fn rule_counts(
        &mut self,
        family: IpFamily,
        table: &str,
    ) -> Result<BTreeMap<String, usize>, NftError> {
        self.inner().rule_counts(family, table)
    }
}
