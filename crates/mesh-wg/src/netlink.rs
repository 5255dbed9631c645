//! Link configuration over rtnetlink: find, configure (MTU, address, up) and delete the TUN link.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt as _;
use nix::errno::Errno;
use rtnetlink::{Handle, LinkUnspec};

use super::Error;
use super::task::Task;

/// Messages about this namespace's links, IPv4 addresses and routes as they change (rtnetlink's multicast
/// groups): a sign that the node's way out, and so its NAT mapping, may have changed.
pub(crate) struct NetworkChanges {
    messages: futures::channel::mpsc::UnboundedReceiver<(
        rtnetlink::packet_core::NetlinkMessage<rtnetlink::packet_route::RouteNetlinkMessage>,
        rtnetlink::sys::SocketAddr,
    )>,
    _connection: Task,
}

impl NetworkChanges {
    /// Subscribes, in the calling thread's network namespace.
    pub(crate) fn watch(ifname: &str) -> Result<Self, Error> {
        use rtnetlink::constants::{RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_LINK};
        use rtnetlink::sys::AsyncSocket as _;
        let socket_error = |source| Error::NetlinkSocket {
            ifname: ifname.to_owned(),
            source,
        };
        let (mut connection, _handle, messages) =
            rtnetlink::new_connection().map_err(socket_error)?;
        let groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE;
        connection
            .socket_mut()
            .socket_mut()
            .bind(&rtnetlink::sys::SocketAddr::new(0, groups))
            .map_err(socket_error)?;
        Ok(Self {
            messages,
            _connection: drive("netlink-changes", ifname, connection),
        })
    }

    /// The next change; `None` once the socket is gone.
    pub(crate) async fn next(&mut self) -> Option<()> {
        use futures::StreamExt as _;
        self.messages.next().await.map(|_| ())
    }
}

/// The task that drives a netlink socket's `connection` for as long as its owner keeps the task.
fn drive(
    name: &'static str,
    ifname: &str,
    connection: rtnetlink::proto::Connection<rtnetlink::packet_route::RouteNetlinkMessage>,
) -> Task {
    Task::spawn(name, tracing::debug_span!("netlink", ifname), async move {
        connection.await;
        Ok(())
    })
}

/// What the kernel knows of a path's MTU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RouteMtu {
    /// Learnt from an ICMP "fragmentation needed" (a route exception).
    Learnt(u32),
    /// The route leaves by the interface with this index, whose MTU is the path's as far as the kernel knows.
    Interface(u32),
}

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
        let connection = drive("netlink", ifname, connection);
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

    /// Caps the segments of the link's super-packets (`gso_max_segs`), so that the kernel segments a larger
    /// one itself.
    pub(crate) async fn cap_segments(&self, index: u32, max: u32) -> Result<(), Error> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .append_extra_attribute(
                        rtnetlink::packet_route::link::LinkAttribute::GsoMaxSegs(max),
                    )
                    .build(),
            )
            .execute()
            .await
            .map_err(self.err(format!("RTM_SETLINK gso_max_segs {max}")))
    }

    /// What the kernel's route to `dst` says of the path's MTU: the MTU it learnt for it (from an ICMP
    /// "fragmentation needed", cached on the route), else the interface it leaves by, whose MTU
    /// [`Netlink::link_mtu`] reads; `None` with no route.
    pub(crate) async fn route_mtu(&self, dst: Ipv4Addr) -> Result<Option<RouteMtu>, Error> {
        use rtnetlink::packet_route::route::{RouteAttribute, RouteMetric};
        let request = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, 32)
            .build();
        let mut routes = self.handle.route().get(request).execute();
        let route = match routes.try_next().await {
            Ok(Some(route)) => route,
            Ok(None) => return Ok(None),
            Err(err)
                if is_errno(&err, Errno::ENETUNREACH) || is_errno(&err, Errno::EHOSTUNREACH) =>
            {
                return Ok(None);
            }
            Err(err) => return Err(self.err(format!("RTM_GETROUTE {dst}"))(err)),
        };
        let mut oif = None;
        for attr in &route.attributes {
            match attr {
                RouteAttribute::Metrics(metrics) => {
                    if let Some(mtu) = metrics.iter().find_map(|m| match m {
                        RouteMetric::Mtu(mtu) => Some(*mtu),
                        _ => None,
                    }) {
                        return Ok(Some(RouteMtu::Learnt(mtu)));
                    }
                }
                RouteAttribute::Oif(index) => oif = Some(*index),
                _ => {}
            }
        }
        Ok(oif.map(RouteMtu::Interface))
    }

    /// The MTU of the link with `index`; `None` when there is no such link.
    pub(crate) async fn link_mtu(&self, index: u32) -> Result<Option<u32>, Error> {
        use rtnetlink::packet_route::link::LinkAttribute;
        let mut links = self.handle.link().get().match_index(index).execute();
        let link = links
            .try_next()
            .await
            .map_err(self.err(format!("RTM_GETLINK {index}")))?;
        Ok(link.and_then(|l| {
            l.attributes.iter().find_map(|a| match a {
                LinkAttribute::Mtu(mtu) => Some(*mtu),
                _ => None,
            })
        }))
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
