// Package s3 keeps Erebus blobs in an S3-compatible object store (AWS S3,
// SeaweedFS, MinIO, Ceph RGW, …), so that every node of a cluster sees the
// same snapshots and a hibernated sandbox can wake on another node.
//
// Each Erebus object is one S3 object named PREFIX/KEY whose bytes are the
// content followed by a fixed 128-byte text trailer (magic line, "sha256:<hex>",
// "size <n>", padded with spaces). The checksum has to travel with the
// content in the same S3 object: S3 metadata is sent before the body, when
// the checksum of a streamed object is not yet known, and a second object
// (or a server-side copy to add metadata afterwards) would either break
// atomicity or write every snapshot twice. An S3 PUT, or the completion of
// a multipart upload, makes the object appear whole or not at all; a failed
// or cancelled Put aborts its multipart upload, so nothing is left behind.
//
// Put streams: objects up to SmallObjectSize go up in one PUT, larger ones
// as a multipart upload of PartSize parts, so memory per Put is bounded by
// about PartSize + SmallObjectSize whatever the object's size. Get fetches
// the trailer with one ranged GET, then streams the content with a second
// GET pinned to the trailer's ETag (If-Match), so a concurrent replacement
// cannot mix two versions; the reader verifies size and sha256 as it
// streams, like the local store. Stat reads only the trailer; List pages
// through ListObjectsV2 and reads each listed object's trailer (a few at a
// time) for its checksum.
//
// Unlike the local store, which refuses to keep "a" beside "a/b", S3 keeps
// both, and deleting "a" leaves "a/b" alone.
//
// New creates the bucket when it does not exist (and logs that it did).
// Every call is bounded by its ctx; without a deadline, the HTTP client's
// own limits (30 s to connect, 1 min for response headers, 3 retries)
// still end a call to a dead or hung server.
package s3

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/s3utils"

	"github.com/tartarus-sandbox/tartarus/pkg/erebus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Defaults for the Config fields left zero.
const (
	DefaultPartSize        = 16 << 20
	DefaultSmallObjectSize = 1 << 20
	// MinPartSize is S3's lower bound for every part but the last.
	MinPartSize = 5 << 20
	// listWorkers bounds the trailer reads List runs at once.
	listWorkers = 8
	// maxRetries bounds the client's own retries of one request (network
	// errors, 5xx); ctx bounds the whole call.
	maxRetries = 3
)

// Config says where the store is. Endpoint, Bucket and credentials are
// required; the rest have defaults.
type Config struct {
	// Endpoint is HOST:PORT of the S3 API (no scheme).
	Endpoint string
	// TLS selects https (true) or plain http.
	TLS bool
	// Bucket holds the objects; New creates it when missing.
	Bucket string
	// Prefix, when set, puts every object under PREFIX/ in the bucket, so
	// several stores (clusters) can share one bucket. It must itself be a
	// valid erebus key (no leading or trailing slash).
	Prefix string
	// Region is the bucket's region; empty asks the server (or us-east-1
	// when it creates the bucket).
	Region string
	// AccessKey and SecretKey sign the requests (AWS signature v4);
	// SessionToken is for temporary credentials.
	AccessKey    string
	SecretKey    string
	SessionToken string
	// PartSize is the size of each part of a multipart upload (at least
	// MinPartSize; default DefaultPartSize). The largest object is 10,000
	// parts.
	PartSize int64
	// SmallObjectSize is the largest object sent in one PUT (default
	// DefaultSmallObjectSize, at most PartSize).
	SmallObjectSize int64
	// ListPageSize is the number of keys asked per ListObjectsV2 page
	// (default: the server's, 1000 on AWS).
	ListPageSize int
	// Transport, when set, replaces the HTTP transport (custom CAs, tests).
	Transport http.RoundTripper
}

// Validate returns every problem with c at once.
func (c Config) Validate() error {
	var errs []error
	if c.Endpoint == "" {
		errs = append(errs, errors.New("endpoint is empty (want HOST:PORT)"))
	} else if strings.Contains(c.Endpoint, "/") {
		errs = append(errs, fmt.Errorf("endpoint %q: want HOST:PORT without a scheme or path", c.Endpoint))
	}
	if err := s3utils.CheckValidBucketNameStrict(c.Bucket); err != nil {
		errs = append(errs, fmt.Errorf("bucket %q: %v", c.Bucket, err))
	}
	if c.Prefix != "" {
		if err := erebus.ValidKey(c.Prefix); err != nil {
			errs = append(errs, fmt.Errorf("prefix: %v", err))
		}
	}
	if c.AccessKey == "" || c.SecretKey == "" {
		errs = append(errs, errors.New("access key and secret key are required"))
	}
	if c.PartSize != 0 && c.PartSize < MinPartSize {
		errs = append(errs, fmt.Errorf("part size %d: want at least %d", c.PartSize, MinPartSize))
	}
	part := c.PartSize
	if part == 0 {
		part = DefaultPartSize
	}
	if c.SmallObjectSize < 0 || c.SmallObjectSize > part {
		errs = append(errs, fmt.Errorf("small object size %d: want 0 to the part size", c.SmallObjectSize))
	}
	if c.ListPageSize < 0 {
		errs = append(errs, fmt.Errorf("list page size %d: want 0 or more", c.ListPageSize))
	}
	if err := errors.Join(errs...); err != nil {
		return tartarus.Errorf(tartarus.ErrInvalid, "erebus s3 config: %v", err)
	}
	return nil
}

// LogValue keeps the secret key out of logs.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("endpoint", c.Endpoint),
		slog.Bool("tls", c.TLS),
		slog.String("bucket", c.Bucket),
		slog.String("prefix", c.Prefix),
		slog.String("region", c.Region),
		slog.String("access_key", c.AccessKey),
	)
}

// Store is an erebus.Store in an S3 bucket. It is safe for concurrent use.
type Store struct {
	core      minio.Core
	bucket    string
	prefix    string // "" or "PREFIX/"
	partSize  int64
	smallSize int64
	pageSize  int
	log       *slog.Logger
}

var _ erebus.Store = (*Store)(nil)

// New connects to the store c describes, checks that the credentials work
// and creates the bucket if it does not exist. A nil log discards.
func New(ctx context.Context, c Config, log *slog.Logger) (*Store, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if c.PartSize == 0 {
		c.PartSize = DefaultPartSize
	}
	if c.SmallObjectSize == 0 {
		c.SmallObjectSize = min(DefaultSmallObjectSize, c.PartSize)
	}
	client, err := minio.New(c.Endpoint, &minio.Options{
		Creds:      credentials.NewStaticV4(c.AccessKey, c.SecretKey, c.SessionToken),
		Secure:     c.TLS,
		Region:     c.Region,
		Transport:  c.Transport,
		MaxRetries: maxRetries,
	})
	if err != nil {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "erebus s3: client for %s: %v", c.Endpoint, err)
	}
	s := &Store{
		core:      minio.Core{Client: client},
		bucket:    c.Bucket,
		partSize:  c.PartSize,
		smallSize: c.SmallObjectSize,
		pageSize:  c.ListPageSize,
		log:       log.With("component", "erebus-s3", "bucket", c.Bucket),
	}
	if c.Prefix != "" {
		s.prefix = c.Prefix + "/"
	}
	if err := s.ensureBucket(ctx, c.Region); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Store) ensureBucket(ctx context.Context, region string) error {
	ok, err := s.core.BucketExists(ctx, s.bucket)
	if err != nil {
		return s.err(ctx, "open bucket "+s.bucket, err)
	}
	if ok {
		return nil
	}
	err = s.core.MakeBucket(ctx, s.bucket, minio.MakeBucketOptions{Region: region})
	if code := minio.ToErrorResponse(err).Code; code == "BucketAlreadyOwnedByYou" || code == "BucketAlreadyExists" {
		return nil // another node created it meanwhile
	}
	if err != nil {
		return s.err(ctx, "create bucket "+s.bucket, err)
	}
	s.log.Info("created bucket")
	return nil
}

// name maps a key to its S3 object name.
func (s *Store) name(key string) string { return s.prefix + key }

// Put implements erebus.Store.
func (s *Store) Put(ctx context.Context, key string, r io.Reader) (erebus.Object, error) {
	if err := erebus.ValidKey(key); err != nil {
		return erebus.Object{}, err
	}
	op := "put " + key
	src := &sealingReader{ctx: ctx, r: r, h: sha256.New()}

	// Read up to smallSize+1 bytes: if the source ends within them, the
	// object goes up in one PUT; otherwise the bytes read start a
	// multipart upload of the rest.
	head := make([]byte, s.smallSize+1)
	n, err := io.ReadFull(src, head)
	var info minio.UploadInfo
	switch {
	case src.err != nil:
		return erebus.Object{}, fmt.Errorf("erebus s3: %s: read source: %w", op, src.err)
	case err == io.EOF || err == io.ErrUnexpectedEOF:
		// The whole object with its trailer is in head.
		info, err = s.core.PutObject(ctx, s.bucket, s.name(key), bytes.NewReader(head[:n]), int64(n), "", "",
			minio.PutObjectOptions{ContentType: "application/octet-stream"})
	case err != nil:
		return erebus.Object{}, fmt.Errorf("erebus s3: %s: %w", op, err)
	default:
		body := io.MultiReader(bytes.NewReader(head[:n]), src)
		info, err = s.core.Client.PutObject(ctx, s.bucket, s.name(key), body, -1,
			minio.PutObjectOptions{ContentType: "application/octet-stream", PartSize: uint64(s.partSize)})
	}
	if src.err != nil {
		return erebus.Object{}, fmt.Errorf("erebus s3: %s: read source: %w", op, src.err)
	}
	if err != nil {
		return erebus.Object{}, s.err(ctx, op, err)
	}
	if !src.sealed {
		// Cannot happen: the client read to EOF or failed.
		return erebus.Object{}, fmt.Errorf("erebus s3: %s: upload ended before the source did", op)
	}
	// S3 answers a PUT without the object's modification time; a HEAD
	// gives it (zero if the object is already gone again).
	obj := erebus.Object{Key: key, Size: src.n, Checksum: src.sum, ModTime: info.LastModified}
	if obj.ModTime.IsZero() {
		if st, err := s.core.StatObject(ctx, s.bucket, s.name(key), minio.StatObjectOptions{}); err == nil {
			obj.ModTime = st.LastModified
		}
	}
	return obj, nil
}

// Get implements erebus.Store.
func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, erebus.Object, error) {
	if err := erebus.ValidKey(key); err != nil {
		return nil, erebus.Object{}, err
	}
	// A Put between the trailer read and the content read makes the
	// content read fail its If-Match; read the new version's trailer then.
	for attempt := 0; ; attempt++ {
		obj, etag, err := s.trailer(ctx, key)
		if err != nil {
			return nil, erebus.Object{}, err
		}
		if obj.Size == 0 {
			return erebus.NewVerifyingReader(ctx, io.NopCloser(bytes.NewReader(nil)), key, obj), obj, nil
		}
		opts := minio.GetObjectOptions{}
		if err := opts.SetRange(0, obj.Size-1); err != nil {
			return nil, erebus.Object{}, fmt.Errorf("erebus s3: get %s: %w", key, err)
		}
		if etag != "" {
			if err := opts.SetMatchETag(etag); err != nil {
				return nil, erebus.Object{}, fmt.Errorf("erebus s3: get %s: %w", key, err)
			}
		}
		body, _, _, err := s.core.GetObject(ctx, s.bucket, s.name(key), opts)
		if minio.ToErrorResponse(err).StatusCode == http.StatusPreconditionFailed && attempt < 3 {
			continue
		}
		if err != nil {
			return nil, erebus.Object{}, s.err(ctx, "get "+key, err)
		}
		return erebus.NewVerifyingReader(ctx, body, key, obj), obj, nil
	}
}

// Stat implements erebus.Store.
func (s *Store) Stat(ctx context.Context, key string) (erebus.Object, error) {
	if err := erebus.ValidKey(key); err != nil {
		return erebus.Object{}, err
	}
	obj, _, err := s.trailer(ctx, key)
	return obj, err
}

// trailer reads key's trailer with a suffix-range GET and checks it against
// the object's length. It returns the object and its ETag.
func (s *Store) trailer(ctx context.Context, key string) (erebus.Object, string, error) {
	opts := minio.GetObjectOptions{}
	if err := opts.SetRange(0, -trailerSize); err != nil {
		return erebus.Object{}, "", fmt.Errorf("erebus s3: stat %s: %w", key, err)
	}
	body, info, hdr, err := s.core.GetObject(ctx, s.bucket, s.name(key), opts)
	if err != nil {
		// An object shorter than the suffix is returned whole by AWS;
		// some servers answer 416 instead. Either way it has no trailer.
		if minio.ToErrorResponse(err).StatusCode == http.StatusRequestedRangeNotSatisfiable {
			return erebus.Object{}, "", fmt.Errorf("erebus s3: object %s: shorter than its trailer: %w", key, erebus.ErrCorrupt)
		}
		return erebus.Object{}, "", s.err(ctx, "stat "+key, err)
	}
	defer body.Close()
	buf, err := io.ReadAll(io.LimitReader(body, trailerSize+1))
	if err != nil {
		return erebus.Object{}, "", s.err(ctx, "stat "+key, err)
	}
	total := int64(len(buf))
	if cr := hdr.Get("Content-Range"); cr != "" {
		total, err = parseContentRangeTotal(cr)
		if err != nil {
			return erebus.Object{}, "", fmt.Errorf("erebus s3: stat %s: %w", key, err)
		}
	} else if len(buf) > trailerSize {
		return erebus.Object{}, "", fmt.Errorf("erebus s3: stat %s: the server ignored the Range header", key)
	}
	sum, size, err := parseTrailer(buf)
	if err != nil {
		return erebus.Object{}, "", fmt.Errorf("erebus s3: object %s: %v: %w", key, err, erebus.ErrCorrupt)
	}
	if total-trailerSize != size {
		return erebus.Object{}, "", fmt.Errorf("erebus s3: object %s: trailer says %d bytes, object holds %d: %w",
			key, size, total-trailerSize, erebus.ErrCorrupt)
	}
	obj := erebus.Object{Key: key, Size: size, Checksum: sum, ModTime: info.LastModified}
	return obj, strings.Trim(info.ETag, `"`), nil
}

// Delete implements erebus.Store.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := erebus.ValidKey(key); err != nil {
		return err
	}
	err := s.core.RemoveObject(ctx, s.bucket, s.name(key), minio.RemoveObjectOptions{})
	if err != nil && minio.ToErrorResponse(err).Code != "NoSuchKey" {
		return s.err(ctx, "delete "+key, err)
	}
	return nil
}

// List implements erebus.Store. Objects whose trailer is damaged are
// listed without a checksum (as the local store lists them), so operators
// see them and can delete them; a Get of one fails with ErrCorrupt.
func (s *Store) List(ctx context.Context, prefix string) ([]erebus.Object, error) {
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var listed []minio.ObjectInfo
	for info := range s.core.Client.ListObjects(lctx, s.bucket, minio.ListObjectsOptions{
		Prefix:    s.prefix + prefix,
		Recursive: true,
		MaxKeys:   s.pageSize,
	}) {
		if info.Err != nil {
			return nil, s.err(ctx, fmt.Sprintf("list %q", prefix), info.Err)
		}
		key := strings.TrimPrefix(info.Key, s.prefix)
		if erebus.ValidKey(key) != nil {
			continue // not ours: a directory marker, or written by someone else
		}
		info.Key = key
		listed = append(listed, info)
	}

	out := make([]erebus.Object, len(listed))
	errs := make([]error, len(listed))
	sem := make(chan struct{}, listWorkers)
	var wg sync.WaitGroup
	for i, info := range listed {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			obj, _, err := s.trailer(lctx, info.Key)
			switch {
			case errors.Is(err, erebus.ErrCorrupt):
				obj = erebus.Object{Key: info.Key, Size: max(info.Size-trailerSize, 0), ModTime: info.LastModified}
			case errors.Is(err, tartarus.ErrNotFound):
				obj = erebus.Object{} // deleted since it was listed
			case err != nil:
				errs[i] = err
				cancel()
			}
			out[i] = obj
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("erebus s3: list %q: %w", prefix, firstErr(errs))
	}
	out = slices.DeleteFunc(out, func(o erebus.Object) bool { return o.Key == "" })
	slices.SortFunc(out, func(a, b erebus.Object) int { return strings.Compare(a.Key, b.Key) })
	return out, nil
}

// firstErr returns the first error that is not a cancellation caused by an
// earlier failure, so List reports the cause.
func firstErr(errs []error) error {
	var first error
	for _, err := range errs {
		if err == nil {
			continue
		}
		if first == nil {
			first = err
		}
		if !errors.Is(err, context.Canceled) {
			return err
		}
	}
	return first
}

// err classifies an error of the S3 client for op ("put KEY", …) into the
// tartarus error classes, keeping the server's code and message.
func (s *Store) err(ctx context.Context, op string, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return fmt.Errorf("erebus s3: %s: %w", op, ctxErr)
	}
	resp := minio.ToErrorResponse(err)
	var class error
	switch resp.Code {
	case "NoSuchKey", "NoSuchBucket":
		class = tartarus.ErrNotFound
	case "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "MissingSecurityHeader":
		class = tartarus.ErrUnauthenticated
	case "AccessDenied", "AllAccessDisabled":
		class = tartarus.ErrPermissionDenied
	case "EntityTooLarge", "QuotaExceeded", "XMinioStorageFull", "StorageFull", "TooManyBuckets":
		class = tartarus.ErrResourceExhausted
	case "SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "XMinioServerNotInitialized":
		class = tartarus.ErrUnavailable
	case "":
		switch {
		case resp.StatusCode == http.StatusNotFound:
			class = tartarus.ErrNotFound
		case resp.StatusCode == http.StatusUnauthorized:
			class = tartarus.ErrUnauthenticated
		case resp.StatusCode == http.StatusForbidden:
			class = tartarus.ErrPermissionDenied
		case resp.StatusCode >= 500:
			class = tartarus.ErrUnavailable
		case resp.StatusCode == 0 && isNetErr(err):
			return fmt.Errorf("erebus s3: %s: %w: %w", op, tartarus.ErrUnavailable, err)
		}
	default:
		if resp.StatusCode >= 500 {
			class = tartarus.ErrUnavailable
		}
	}
	if class == nil {
		return fmt.Errorf("erebus s3: %s: %w", op, err)
	}
	msg := resp.Message
	if resp.Code != "" {
		msg = fmt.Sprintf("%s (%s)", msg, resp.Code)
	}
	if msg == "" {
		msg = err.Error()
	}
	if class == tartarus.ErrUnauthenticated || class == tartarus.ErrPermissionDenied {
		msg = "the server refused the credentials: " + msg
	}
	return tartarus.Errorf(class, "erebus s3: %s: %s", op, msg)
}

func isNetErr(err error) bool {
	var netErr net.Error
	var opErr *net.OpError
	return errors.As(err, &netErr) || errors.As(err, &opErr)
}

// parseContentRangeTotal returns the complete length from a Content-Range
// header ("bytes 10-137/138").
func parseContentRangeTotal(cr string) (int64, error) {
	_, total, ok := strings.Cut(cr, "/")
	n, err := strconv.ParseInt(total, 10, 64)
	if !ok || err != nil || n < 0 {
		return 0, fmt.Errorf("bad Content-Range %q", cr)
	}
	return n, nil
}

// sealingReader streams the source into the upload, hashing it, and then
// the trailer with the checksum and size. It stops once ctx is done and
// remembers the source's error, so Put can tell a failing source (or a
// cancelled ctx) from a failing server.
type sealingReader struct {
	ctx     context.Context
	r       io.Reader
	h       hash.Hash
	n       int64
	err     error
	sealed  bool
	sum     string
	trailer []byte
}

func (sr *sealingReader) Read(p []byte) (int, error) {
	if sr.sealed {
		if len(sr.trailer) == 0 {
			return 0, io.EOF
		}
		n := copy(p, sr.trailer)
		sr.trailer = sr.trailer[n:]
		return n, nil
	}
	if sr.err != nil {
		return 0, sr.err
	}
	if err := sr.ctx.Err(); err != nil {
		sr.err = err
		return 0, err
	}
	n, err := sr.r.Read(p)
	sr.h.Write(p[:n])
	sr.n += int64(n)
	switch {
	case err == io.EOF:
		sr.sealed = true
		sr.sum = "sha256:" + hex.EncodeToString(sr.h.Sum(nil))
		sr.trailer = erebus.FormatChecksum(trailerMagic, sr.sum, sr.n, trailerSize)
		return n, nil
	case err != nil:
		sr.err = err
		return n, err
	}
	return n, nil
}

// The trailer: a magic line, "sha256:<hex>\n", "size <n>\n", spaces up to
// trailerSize-1 and a final newline, so `tail -c 128` shows it readably.
const (
	trailerSize  = 128
	trailerMagic = "erebus-s3-object v1\n"
)

func parseTrailer(t []byte) (sum string, size int64, err error) {
	if len(t) != trailerSize {
		return "", 0, fmt.Errorf("trailer is %d bytes, want %d", len(t), trailerSize)
	}
	return erebus.ParseChecksum(t, trailerMagic)
}
