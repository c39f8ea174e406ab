/* comm_mpi.h — the fs_comm engine over MPI, for CPU processes on one or
 * several machines (Open MPI from Debian: openmpi-bin, libopenmpi-dev).
 *
 * Only world.c calls these: it starts MPI when mpirun launched fsrun and
 * hands the strategies this table. Every call uses MPI's own collectives;
 * a blocking one is the non-blocking call plus a wait that polls MPI_Test
 * and gives up with FS_ERR_COMM after fs_comm.timeout_s seconds, so a rank
 * that died or hangs ends the run instead of freezing it. Communicators
 * return errors (MPI_ERRORS_RETURN) instead of aborting inside MPI.
 *
 * Built only with FS_WITH_MPI; without it fs_comm_mpi_available() is 0 and
 * the rest reports FS_ERR_UNSUPPORTED. */
#ifndef FS_COMM_MPI_H
#define FS_COMM_MPI_H

#include "fastserve/comm.h"

/* 1 when this fsrun was built with MPI. */
int fs_comm_mpi_available(void);
/* "Open MPI v4.1.4, ..." (the library's own words), or why there is none. */
const char *fs_comm_mpi_version(void);

/* MPI_Init_thread (FUNNELED: only the main thread calls MPI) and the world
 * communicator as an fs_comm. */
int fs_comm_mpi_start(fs_comm *c, double timeout_s, fs_error *err);
/* Ranks of this job on this machine (shared-memory node). */
int fs_comm_mpi_local_size(const fs_comm *c);
/* This rank among them (0 .. local_size - 1): which GPU of the machine it
 * takes. */
int fs_comm_mpi_local_rank(const fs_comm *c);
/* Frees the world communicator and calls MPI_Finalize. */
void fs_comm_mpi_finish(fs_comm *c);
/* MPI_Abort on the world: every rank of the job ends with `code`. */
void fs_comm_mpi_abort(fs_comm *c, int code);

#endif
