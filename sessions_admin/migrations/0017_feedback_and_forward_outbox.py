import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('sessions_admin', '0016_apiclient_retention_days'),
    ]

    operations = [
        migrations.CreateModel(
            name='Feedback',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('rating', models.CharField(choices=[('up', 'Up'), ('down', 'Down')], max_length=4)),
                ('comment', models.TextField(blank=True, default='')),
                ('answered_at', models.DateTimeField(help_text="When the rated answer was written (the message's time).")),
                ('created_at', models.DateTimeField(default=django.utils.timezone.now)),
                ('updated_at', models.DateTimeField(default=django.utils.timezone.now)),
                ('conversation', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='feedback', to='sessions_admin.conversation')),
                ('message', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, related_name='feedback', to='sessions_admin.message')),
            ],
            options={
                'verbose_name_plural': 'feedback',
                'indexes': [models.Index(fields=['rating', 'conversation'], name='feedback_rating_conversation'), models.Index(fields=['answered_at'], name='feedback_answered')],
            },
        ),
        migrations.CreateModel(
            name='FeedbackForward',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('coze_conversation_id', models.CharField(max_length=64)),
                ('coze_message_id', models.CharField(max_length=64)),
                ('action', models.CharField(choices=[('like', 'Like'), ('unlike', 'Unlike'), ('delete', 'Delete')], max_length=8)),
                ('comment', models.TextField(blank=True, default='')),
                ('version', models.PositiveIntegerField(default=1)),
                ('attempts', models.PositiveSmallIntegerField(default=0)),
                ('next_attempt_at', models.DateTimeField(default=django.utils.timezone.now)),
                ('last_error', models.CharField(blank=True, default='', max_length=300)),
                ('done', models.BooleanField(default=False)),
                ('done_at', models.DateTimeField(blank=True, null=True)),
                ('created_at', models.DateTimeField(default=django.utils.timezone.now)),
                ('updated_at', models.DateTimeField(default=django.utils.timezone.now)),
                ('message', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, related_name='feedback_forward', to='sessions_admin.message')),
            ],
            options={
                'indexes': [models.Index(condition=models.Q(('done', False)), fields=['next_attempt_at'], name='feedback_forward_due')],
            },
        ),
    ]
