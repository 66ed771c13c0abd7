#!/usr/bin/env python3
"""Experiment: restore a microVM snapshot by mapping the template's RAM file
(memory-backend-file share=off + x-ignore-shared) against loading the whole
migration stream, on QEMU 7.2 under TCG, outside the driver.

  exp.py template SECONDS   boot the template with share=on RAM, save device state only
  exp.py mapped N           N clones mapping the RAM file copy-on-write (N=1: also hibernate in full)
  exp.py full N             N clones loading the full stream written by "mapped 1"

With MEMFD=1 "mapped" clones map a sealed memfd copy of the RAM file
(mem-path=/proc/self/fd/N, the descriptor inherited) instead of the file.
"""
import json, os, socket, subprocess, sys, time
T=os.environ.get('TARTARUS_TEST_DATA','/var/tmp/tartarus-test')+'/images/templates/'+os.environ.get('TEMPLATE','base')
D=os.environ.get('WORKDIR','/var/tmp/tartarus-mapped-restore')
os.makedirs(D,exist_ok=True)
class QMP:
    def __init__(s, path):
        for _ in range(200):
            try:
                s.s=socket.socket(socket.AF_UNIX); s.s.connect(path); break
            except OSError: time.sleep(0.02)
        s.f=s.s.makefile('rw'); s.f.readline(); s.cmd('qmp_capabilities')
    def cmd(s, c, **a):
        s.f.write(json.dumps({'execute':c,'arguments':a})+'\n'); s.f.flush()
        while True:
            r=json.loads(s.f.readline())
            if 'return' in r or 'error' in r: return r
    def wait_mig(s):
        while True:
            r=s.cmd('query-migrate')['return']
            if r.get('status') in ('completed','failed'): return r
            time.sleep(0.002)
def qemu(name, mem, extra):
    ov=D+'/ov.qcow2'
    if name.startswith('c'):
        ov=D+'/ov-'+name+'.qcow2'; subprocess.run(['cp',D+'/ov.qcow2',ov],check=True)
    sock=f'{D}/{name}.qmp'
    if os.path.exists(sock): os.unlink(sock)
    a=['qemu-system-x86_64','-machine','microvm'+(',memory-backend=microvm.ram' if mem else ''),'-nodefaults','-no-user-config','-nographic','-no-reboot','-monitor','none',
       '-m','256','-smp','1','-kernel',T+'/vmlinux','-initrd',T+'/initrd.img','-append','console=ttyS0 quiet tsc=reliable tartarus.root=/dev/vda tartarus.rootfstype=ext4 norandmaps',
       '-serial','file:'+D+'/'+name+'.console','-drive','id=root,file='+ov+',format=qcow2,if=none','-device','virtio-blk-device,drive=root',
       '-chardev','socket,id=agent,path='+D+'/'+name+'.agent,server=on,wait=off','-device','virtio-serial-device,max_ports=2','-device','virtserialport,chardev=agent,name=tartarus',
       '-qmp','unix:'+sock+',server=on,wait=off','-accel','tcg,tb-size=64','-cpu','qemu64,+arat']
    if mem: a+=['-object',mem]
    p=subprocess.Popen(a+extra, pass_fds=PASS); return p, QMP(sock)
def pss(pid):
    for l in open(f'/proc/{pid}/smaps_rollup'):
        if l.startswith('Pss:'): return int(l.split()[1])//1024
mode=sys.argv[1]
PASS=(); RAM=D+'/ram'
if mode=='mapped' and os.environ.get('MEMFD')=='1':
    import fcntl
    fd=os.memfd_create('template-ram', os.MFD_CLOEXEC|os.MFD_ALLOW_SEALING)
    with open(RAM,'rb') as f:
        while b:=f.read(1<<20): os.write(fd,b)
    # F_ADD_SEALS: SEAL | SHRINK | GROW | WRITE; private copy-on-write maps stay allowed
    fcntl.fcntl(fd, 1033, 1|2|4|8)
    try:
        os.pwrite(fd,b'x',0); sys.exit('sealed memfd took a write')
    except PermissionError: pass
    os.set_inheritable(fd, True); PASS=(fd,); RAM='/proc/self/fd/%d'%fd
if mode=='template':
    subprocess.run(['qemu-img','create','-q','-f','qcow2','-F','raw','-b',T+'/rootfs.ext4',D+'/ov.qcow2'],check=True)
    for f in ('ram','full.state','shared.state'):
        if os.path.exists(D+'/'+f): os.unlink(D+'/'+f)
    p,q=qemu('tpl','memory-backend-file,id=microvm.ram,mem-path='+D+'/ram,share=on,size=256M',[])
    time.sleep(float(sys.argv[2]))
    print(q.cmd('human-monitor-command',**{'command-line':'info ramblock'}))
    q.cmd('stop')
    q.cmd('migrate-set-parameters',**{'max-bandwidth':16<<30})
    print(q.cmd('migrate-set-capabilities',capabilities=[{'capability':'x-ignore-shared','state':True}]))
    t=time.time(); print(q.cmd('migrate',uri='exec:cat > '+D+'/shared.state')); print('shared', q.wait_mig()['status'], time.time()-t)
    q.cmd('quit'); p.wait()
    os.system('ls -la '+D)
else:
    if mode=='full' and not os.path.exists(D+'/full.state'):
        sys.exit('no full stream: run "mapped 1" first')
    n=int(sys.argv[2]); procs=[]; times=[]
    for i in range(n):
        if mode=='mapped':
            p,q=qemu(f'c{i}','memory-backend-file,id=microvm.ram,mem-path='+RAM+',share=off,size=256M',['-incoming','defer'])
            q.cmd('migrate-set-capabilities',capabilities=[{'capability':'x-ignore-shared','state':True}])
            st='shared.state'
        else:
            p,q=qemu(f'c{i}','memory-backend-file,id=microvm.ram,mem-path='+D+'/ram,share=off,size=256M' if mode=='fullmem' else None,['-incoming','defer'])
            st='full.state'
        t=time.time(); r=q.cmd('migrate-incoming',uri='exec:cat '+D+'/'+st)
        while True:
            s=q.cmd('query-status')['return']['status']
            if s!='inmigrate': break
            time.sleep(0.002)
        dt=time.time()-t; q.cmd('cont'); times.append(dt*1000); procs.append((p,q))
    if mode=='mapped' and n==1:
        time.sleep(2); q.cmd('stop'); print(q.cmd('migrate-set-capabilities',capabilities=[{'capability':'x-ignore-shared','state':False}])); q.cmd('migrate-set-parameters',**{'max-bandwidth':16<<30})
        t=time.time(); print(q.cmd('migrate',uri='exec:cat > '+D+'/full.state')); print('hibernate-full', q.wait_mig()['status'], time.time()-t); q.cmd('cont')
        os.system('ls -la '+D+'/full.state')
    time.sleep(8)
    print(mode,'status after 8 s',sorted(set(q.cmd('query-status')['return']['status'] for p,q in procs)),
          'guest RIPs',[q.cmd('human-monitor-command',**{'command-line':'info registers'})['return'].split('RIP=')[1][:16] for p,q in procs[:2]])
    ps=sorted(pss(p.pid) for p,q in procs); times.sort()
    print(mode,'n',n,'restore_ms p50 %.1f max %.1f'%(times[len(times)//2],times[-1]),'pss_mib p50',ps[len(ps)//2],'max',ps[-1])
    for p,q in procs: q.cmd('quit'); p.wait()
