//! Link configuration over rtnetlink: find, configure (MTU, address, up) and delete the TUN link.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt as _;
use nix::errno::Errno;
use rtnetlink::{Handle, LinkUnspec};

use super::Error;
use super::task::Task;

/// A netlink route socket bound to the network namespace it was opened in.
///
/// The socket stays in that namespace for its whole life, so teardown works from any thread.
pub(crate) struct Netlink {
    ifname: String,
    handle: Handle,
    _connection: Task,
}

fn is_errno(err: &rtnetlink::Error, errno: Errno) -> bool {
    matches!(err, rtnetlink::Error::NetlinkError(msg) if msg.raw_code() == -(errno as i32))
}

impl Netlink {
    /// Opens a route socket in the calling thread's network namespace.
    pub(crate) fn open(ifname: &str) -> Result<Self, Error> {
        let (connection, handle, _messages) =
            rtnetlink::new_connection().map_err(|source| Error::NetlinkSocket {
                ifname: ifname.to_owned(),
                source,
            })?;
        let connection = Task::spawn(
            "netlink",
            tracing::debug_span!("netlink", ifname),
            async move {
                connection.await;
                Ok(())
            },
        );
        Ok(Self {
            ifname: ifname.to_owned(),
            handle,
            _connection: connection,
        })
    }

    fn err(&self, op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error + '_ {
        let op = op.into();
        move |source| Error::Netlink {
            ifname: self.ifname.clone(),
            op,
            source,
        }
    }

    /// The index of the link called `name`, or `None` if there is none.
    pub(crate) async fn link_index(&self, name: &str) -> Result<Option<u32>, Error> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match links.try_next().await {
            Ok(Some(link)) => Ok(Some(link.header.index)),
            Ok(None) => Ok(None),
            Err(err) if is_errno(&err, Errno::ENODEV) => Ok(None),
            Err(err) => Err(self.err("RTM_GETLINK")(err)),
        }
    }

    /// Sets the MTU, adds `address/prefix_len` (the kernel adds the connected route) and brings
    /// the link up.
    pub(crate) async fn configure(
        &self,
        index: u32,
        mtu: u16,
        address: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<(), Error> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .mtu(u32::from(mtu))
                    .build(),
            )
            .execute()
            .await
            .map_err(self.err(format!("RTM_SETLINK mtu {mtu}")))?;
        self.handle
            .address()
            .add(index, IpAddr::V4(address), prefix_len)
            .execute()
            .await
            .map_err(self.err(format!("RTM_NEWADDR {address}/{prefix_len}")))?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(self.err("RTM_SETLINK up"))?;
        Ok(())
    }

    /// Deletes the link; a link that is already gone is not an error.
    pub(crate) async fn delete_link(&self, index: u32) -> Result<(), Error> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(err) if is_errno(&err, Errno::ENODEV) => Ok(()),
            Err(err) => Err(self.err("RTM_DELLINK")(err)),
        }
    }
}
