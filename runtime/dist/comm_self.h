/* comm_self.h — the single-process communicator: world of one rank, every
 * collective is the identity. The default when fsrun runs without an MPI
 * launcher; strategies see the same fs_comm interface either way. */
#ifndef FS_COMM_SELF_H
#define FS_COMM_SELF_H

#include "fastserve/comm.h"

void fs_comm_self_init(fs_comm *c);

#endif
